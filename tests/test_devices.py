"""Nothing is left behind on the wrong device, checked on the CPU: a TorchFunctionMode watches one step of every
algorithm (with its collection: sampling, scoring, reference log-probs), an SFT step, a reward-model step and an
evaluation, and flags (a) any tensor factory called from pftlab's own code without a device, which on a GPU would
put that tensor on the CPU, and (b) any op whose tensor arguments sit on different devices."""
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves
from transformers import GPT2Config, GPT2ForSequenceClassification

from pftlab.algorithms.table import ALGORITHMS
from pftlab.core import distributed
from pftlab.evaluation.evaluate import evaluate_samples, pair_likelihood_change, sample_eval
from pftlab.training.config import RewardModelConfig, SftConfig
from pftlab.training.supervised import train_reward_model, train_sft
from tests.test_checkpoint import (
    CFG,
    EOS,
    PAD,
    in_tmp_and_signals_restored,  # noqa: F401 - an autouse fixture, found by name
    run_policy,
)
from tests.test_model import tiny_model

LIBRARY = str(Path(__file__).resolve().parents[1] / "src" / "pftlab")
FACTORIES = {torch.tensor, torch.full, torch.zeros, torch.ones, torch.empty, torch.arange, torch.randn, torch.rand,
             torch.randint, torch.randperm, torch.as_tensor, torch.eye, torch.linspace, torch.scalar_tensor}


class DeviceAudit(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.undeviced, self.mixed = set(), set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1)
        where = f"{caller.f_code.co_filename}:{caller.f_lineno}"
        if func in FACTORIES and kwargs.get("device") is None and caller.f_code.co_filename.startswith(LIBRARY):
            if not (func is torch.randperm and "generator" in kwargs):  # a CPU generator's shuffle: indices, on purpose
                self.undeviced.add(where)
        devices = {t.device for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.dim() > 0}
        if len(devices) > 1:
            self.mixed.add(f"{getattr(func, '__name__', func)} at {where}: {sorted(map(str, devices))}")
        return func(*args, **kwargs)


@pytest.fixture
def audit():
    with DeviceAudit() as mode:
        yield mode
    assert not mode.undeviced, f"tensor factories without a device in pftlab: {sorted(mode.undeviced)}"
    assert not mode.mixed, f"ops across devices: {sorted(mode.mixed)}"


def test_the_audit_catches_a_factory_without_a_device():
    """The check itself can fail: a factory call without a device, made from a file under src/pftlab."""
    with DeviceAudit() as mode:
        exec(compile("import torch\ntorch.zeros(3)\ntorch.zeros(3, device='cpu')", f"{LIBRARY}/lm/probe.py", "exec"))
    assert mode.undeviced == {f"{LIBRARY}/lm/probe.py:2"}


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_one_step_of_every_algorithm_keeps_its_tensors_on_the_models_device(name, audit):
    history, policy = run_policy(name, cfg=CFG | {"iterations": 1, "steps_per_batch": 1})
    assert history and next(policy.parameters()).device == distributed.device()


def test_sft_and_reward_model_steps_and_evaluation_keep_their_tensors_on_the_models_device(audit):
    examples = [([3 + i % 4], [7, 8, 9][: 1 + i % 3] + [EOS]) for i in range(6)]
    knobs = dict(epochs=1, batch_size=3, lr=1e-2, warmup_steps=1, lr_schedule="cosine", max_grad_norm=1.0, weight_decay=0.0)
    model = tiny_model(seed=2).train().to(distributed.device())
    assert train_sft(model, examples, examples[:3], SftConfig(**knobs), PAD, seed=0, eval_every=1)
    config = GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=1, n_head=2, num_labels=1, pad_token_id=PAD)
    rm = GPT2ForSequenceClassification(config).to(distributed.device())
    pairs = [{"prompt_ids": [3 + i], "chosen_ids": [7, EOS], "rejected_ids": [9, 9, EOS]} for i in range(6)]
    assert train_reward_model(rm, pairs, RewardModelConfig(**knobs, eval_fraction=0.2), PAD, seed=0)
    tokenizer = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD, decode=lambda ids, **_: " ".join(map(str, ids)))
    generation = {"max_new_tokens": 4, "temperature": 1.0, "batch_size": 4}
    repeated, responses = sample_eval(model, [[3], [4]], 2, generation, tokenizer)
    metrics, rows = evaluate_samples(model, model, rm, repeated, responses, 2, {"reward": "reward_model"},
                                     torch.zeros(len(responses)).numpy(), tokenizer)
    assert len(rows) == 4 and metrics["samples"] == 4
    assert pair_likelihood_change(model, model, pairs, PAD)["likelihood_pairs"] == 6


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs the pipeline")
def test_the_gpu_smoke_script_says_there_is_no_gpu_and_exits_cleanly():
    import subprocess

    script = Path(__file__).resolve().parents[1] / "bench" / "gpu_smoke.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PY": sys.executable})
    assert out.returncode == 0 and "no CUDA device" in out.stdout, out.stdout + out.stderr
