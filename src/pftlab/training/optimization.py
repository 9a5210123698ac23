"""How losses become parameter updates, for the policy loop: AdamW, warmup then decay, gradient clipping,
gradient accumulation over micro-batches, in plain PyTorch or through a DeepSpeed engine.

With `policy.deepspeed` naming a config file (configs/deepspeed/), the model is wrapped by
`deepspeed.initialize` with our AdamW and scheduler; the batch sizes and clipping come from params (the
file's values for them are overwritten) and ZeRO stage, bf16 and offload from the file. Under a launcher
(`deepspeed`, `accelerate launch`, `torchrun`) the process group comes from the environment; alone, a
one-process group is set up, which is how the test runs it on CPU.
"""
import contextlib
import json
import math
import os
import shutil
from pathlib import Path

import torch
from transformers import get_scheduler

from pftlab.core.distributed import is_main_process, world_size
from pftlab.core.errors import ParamError
from pftlab.training.config import LR_SCHEDULES, OptimizerKnobs

# transformers' name of each schedule of training/config.LR_SCHEDULES (after warmup)
SCHEDULES = dict(zip(LR_SCHEDULES, ("cosine", "linear", "constant_with_warmup")))


class Updater:
    """`backward(loss, weight, last)` once per micro-batch, then `step()` once per optimizer step: returns the
    gradient norm before clipping, NaN if non-finite (the update is then skipped)."""

    def __init__(self, model, parameters, cfg: OptimizerKnobs, total_steps: int, accumulation: int = 1,
                 micro_batch_size: int = 1, weight_decay: float = 0.0, deepspeed: str = None):
        self.accumulation, self.max_grad_norm, self.parameters = accumulation, cfg.max_grad_norm, parameters
        if world_size() > 1 and not deepspeed:
            raise ParamError(f"{world_size()} processes without a DeepSpeed config would not average gradients: "
                             "set policy.deepspeed / sft.deepspeed / reward_model.deepspeed (configs/deepspeed/)")
        self.optimizer = torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=weight_decay)
        self.scheduler = get_scheduler(SCHEDULES[cfg.lr_schedule], self.optimizer,
                                       num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
        self.engine, self.engine_dir, self._last_tag = None, None, None
        if deepspeed and accumulation > 1 and getattr(cfg, "skip_nonfinite_steps", None):
            raise ParamError("skip_nonfinite_steps > 0 with DeepSpeed and micro-batches cannot skip exactly (ZeRO reduces "
                             "each micro-batch's gradient as it goes): set skip_nonfinite_steps: 0 or no micro_batch_size")
        if deepspeed:
            self.engine = deepspeed_engine(model, self.optimizer, self.scheduler, deepspeed, micro_batch_size,
                                           accumulation, cfg.max_grad_norm)

    def zero_grad(self):
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)

    def backward(self, loss, weight: float = 1.0, last: bool = True):
        """`loss`: a micro-batch's mean over its units; `weight`: what `step.accumulate` gives it (the processes
        times its share of the whole minibatch's units), so that the gradient is the whole minibatch's mean."""
        if self.engine is None:
            (loss * weight).backward()
        else:  # DeepSpeed: our weights instead of its 1/accumulation, and the step's boundary set by us
            self.engine.set_gradient_accumulation_boundary(last)
            self.engine.backward(loss * weight, scale_wrt_gas=False)
            self.engine.step()

    def step(self) -> float:
        if self.engine is not None:
            norm = self.engine.get_global_grad_norm()
            return float("nan") if norm is None else float(norm)
        norm = torch.nn.utils.clip_grad_norm_(self.parameters, self.max_grad_norm).item()
        if math.isfinite(norm):
            self.optimizer.step()
        self.scheduler.step()
        return norm

    def skip(self):
        """A step whose loss was not finite: no update, the schedule moves on."""
        self.zero_grad()
        if self.engine is None:
            self.scheduler.step()

    @property
    def lr(self):
        return self.scheduler.get_last_lr()[0]

    def state_dict(self):
        if self.engine is None:
            return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict()}
        # DeepSpeed's own checkpoint (weights, partitioned optimizer state, scheduler), written by every rank
        # next to ours; ours names its tag, so a save killed halfway leaves the previous pair intact.
        tag = f"step{self.engine.global_steps}"
        self.engine.save_checkpoint(str(self.engine_dir), tag=tag, save_latest=False)
        if is_main_process():
            for old in self.engine_dir.glob("step*"):
                if old.name != tag and old.name != self._last_tag:
                    shutil.rmtree(old, ignore_errors=True)
        self._last_tag = tag
        return {"deepspeed_tag": tag}

    def load_state_dict(self, state):
        if self.engine is None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        else:
            self.engine.load_checkpoint(str(self.engine_dir), tag=state["deepspeed_tag"])
            self._last_tag = state["deepspeed_tag"]


def deepspeed_engine(model, optimizer, scheduler, config_path, micro_batch_size, accumulation, max_grad_norm):
    path = Path(config_path)
    if not path.is_file():
        raise ParamError(f"params.yaml: 'policy.deepspeed' names {path}, which is not a file (see configs/deepspeed/)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ParamError(f"{path}: not valid JSON: {e}") from None
    if "optimizer" in config or "scheduler" in config:
        raise ParamError(f"{path}: remove 'optimizer' / 'scheduler': the policy loop's AdamW and schedule are used")
    if config.get("zero_optimization", {}).get("stage") == 3 and accumulation > 1 and not torch.cuda.is_available():
        # Measured here (DeepSpeed 0.19.8, one CPU process): ZeRO-3 keeps only the last micro-batch's gradient.
        raise ParamError(f"{path}: ZeRO-3 with gradient accumulation ({accumulation} micro-batches) is wrong on CPU "
                         "(DeepSpeed keeps the last micro-batch's gradient only); use ZeRO-2 or no micro_batch_size")
    deepspeed = _import_deepspeed()
    world = world_size()
    _resolve_auto(config)
    config |= {"train_micro_batch_size_per_gpu": micro_batch_size, "gradient_accumulation_steps": accumulation,
               "train_batch_size": micro_batch_size * accumulation * world, "gradient_clipping": max_grad_norm}
    config.setdefault("steps_per_print", 10**9)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config)
    return engine


@contextlib.contextmanager
def full_weights(model):
    """The whole weights on every process for the block (ZeRO-3 partitions them; otherwise a no-op).
    Every process must enter it: gathering is collective."""
    params = list(model.parameters())
    if not any(hasattr(p, "ds_id") for p in params):
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


def zero_stage(config_path) -> int:
    """The ZeRO stage a DeepSpeed config file asks for; 0 without one."""
    if not config_path:
        return 0
    return json.loads(Path(config_path).read_text()).get("zero_optimization", {}).get("stage", 0)


def compute_dtype(config_path) -> torch.dtype:
    """The precision DeepSpeed trains in under this config: bf16 or fp16 where the file enables them (bf16
    "auto": where the hardware has it), fp32 without a config. Log-probs and losses are fp32 whatever it is."""
    if not config_path:
        return torch.float32
    config = _resolve_auto(json.loads(Path(config_path).read_text()))
    if config["bf16"].get("enabled") is True:
        return torch.bfloat16
    return torch.float16 if config.get("fp16", {}).get("enabled") is True else torch.float32


def frozen_model(model, config_path, partition: bool = True):
    """A frozen model beside a DeepSpeed policy (the reference copy, the reward model) in the policy's precision:
    policy and reference log-probs then agree at the start (KL 0, ratio 1) as in fp32, and a bf16 copy holds half
    the memory. Under ZeRO-3 with `partition`, it is partitioned like the policy (if it was not loaded so): an
    inference engine in the config's precision, no optimizer. Without a config: the model as it is."""
    if not config_path:
        return model
    if zero_stage(config_path) != 3 or not partition:
        return model.to(compute_dtype(config_path))
    deepspeed = _import_deepspeed()
    config = json.loads(Path(config_path).read_text())
    config = _resolve_auto({"zero_optimization": config["zero_optimization"], "bf16": config.get("bf16", {}),
                            "fp16": config.get("fp16", {}), "train_micro_batch_size_per_gpu": 1})
    engine, *_ = deepspeed.initialize(model=model, config=config)
    return engine


@contextlib.contextmanager
def partitioned_loading(config_path):
    """Under ZeRO-3, every model loaded in the block (`from_pretrained`) is partitioned as it is read:
    transformers builds it under DeepSpeed's `zero.Init` and copies each tensor of the checkpoint into the
    processes' shards, so no process ever holds the whole model on its device. Any other config, or none:
    nothing changes (the engine partitions at `deepspeed.initialize`, if at all)."""
    if zero_stage(config_path) != 3:
        yield
        return
    deepspeed = _import_deepspeed()
    import transformers.integrations.deepspeed as hf_deepspeed

    deepspeed.init_distributed()  # zero.Init partitions over the process group: made here if none is yet
    config = json.loads(Path(config_path).read_text())
    config = _resolve_auto(config | {"train_micro_batch_size_per_gpu": 1, "train_batch_size": world_size()})
    before = hf_deepspeed._hf_deepspeed_config_weak_ref  # a caller's own setting, put back after the block
    hold = hf_deepspeed.HfDeepSpeedConfig(config)  # transformers reads it through a weak reference: held here
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = before
        del hold


def _import_deepspeed():
    # a launcher sets these; alone, a group of one process (port 0: any free port, so runs side by side never clash)
    for var, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "0"}.items():
        os.environ.setdefault(var, value)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import deepspeed.ops

    if world_size() == 1:  # the shared-memory all-reduce op only serves several CPU processes:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # skip its ~50 s compile
    return deepspeed


def _resolve_auto(config: dict) -> dict:
    """bf16 "auto": on where the hardware has it (GPUs from Ampere on), fp32 elsewhere (CPU)."""
    bf16 = config.setdefault("bf16", {})
    if bf16.get("enabled") == "auto":
        bf16["enabled"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return config
