"""The scale-out knobs leave the numbers alone: micro-batch accumulation, gradient checkpointing, and
DeepSpeed ZeRO-3 (one CPU process: partitioned weights, a sharded frozen reference, gathered saving) give
the plain loop's losses and weights; DeepSpeed's checkpoint resumes like ours."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from pftlab.algorithms.hyperparameters import PairHp
from pftlab.algorithms.table import ALGORITHMS
from pftlab.core.checkpoint import Checkpointer
from pftlab.core.errors import ParamError
from pftlab.core.stage import seed_everything
from pftlab.lm.model import load_policy
from pftlab.lm.reference import policy_and_reference, save_policy, weight_copies
from pftlab.lm.tokenizer import train_tokenizer
from pftlab.training.loop import train_policy
from pftlab.training.optimization import compute_dtype, frozen_model, full_weights, partitioned_loading
from pftlab.training.sources import OfflinePairs, make_source
from tests.test_checkpoint import (
    CFG,
    EOS,
    GENERATION,
    HP,
    PAD,
    TOKENIZER,
    Crash,
    CrashAt,
    in_tmp_and_signals_restored,  # noqa: F401 - an autouse fixture, found by name
    loop_config,
    reward_fn,
    run_policy,
)
from tests.test_model import tiny_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "deepspeed"

LOSS_KEYS = ("loss", "grad_norm", "margin")


def close(a, b, tol=1e-5):
    return len(a) == len(b) and all(abs(x[k] - y[k]) <= tol * max(1.0, abs(x[k])) for x, y in zip(a, b) for k in LOSS_KEYS)


def test_micro_batches_accumulate_to_the_full_minibatch_gradient():
    plain, plain_policy = run_policy("dpo")
    shutil.rmtree("checkpoints")
    accumulated, policy = run_policy("dpo", cfg=CFG | {"micro_batch_size": 1})  # 2 micro-batches per step
    assert close(plain, accumulated)
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(plain_policy.parameters(), policy.parameters()))  # float sums


DPO_HP = PairHp(beta=0.1)  # fixed here: the tolerances below were measured at it, whatever the sweep puts in params.yaml


def dpo_run(tmp_path, cfg, reference="frozen_copy", checkpointer=None, tracker=None, name="base"):
    """DPO on toy pairs from a saved tiny model, as the policy stage does it (optionally with LoRA)."""
    if not (tmp_path / name).exists():
        tiny_model(seed=1).save_pretrained(tmp_path / name)
    seed_everything(0)  # after: tiny_model seeds the global generator, and LoRA's init draws from it
    cfg = loop_config(cfg)
    with partitioned_loading(cfg.deepspeed):
        policy, ref = policy_and_reference(tmp_path / name, reference, 4, 8, bool(cfg.gradient_checkpointing))
    if reference == "frozen_copy":
        ref = frozen_model(ref, cfg.deepspeed)
    pairs = [{"prompt_ids": [3 + i % 5], "chosen_ids": [7, 8, EOS], "rejected_ids": [9, EOS]} for i in range(6)]
    history = train_policy(ALGORITHMS["dpo"], DPO_HP, cfg, 0, policy, ref, OfflinePairs(pairs, PAD, 0), None, tracker,
                           checkpointer=checkpointer)
    return history, policy


def test_gradient_checkpointing_changes_memory_not_numbers(tmp_path):
    plain, _ = dpo_run(tmp_path, CFG, "lora")
    recomputed, policy = dpo_run(tmp_path, CFG | {"gradient_checkpointing": True}, "lora")
    assert policy.base_model.model.transformer.gradient_checkpointing  # it was on
    assert close(plain, recomputed, 1e-6)


@pytest.fixture
def zero3_config(tmp_path):
    config = json.loads((CONFIGS / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even tiny weights
    path = tmp_path / "zero3.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_deepspeed_zero3_partitions_and_matches_the_plain_loop(tmp_path, zero3_config):
    plain, plain_policy = dpo_run(tmp_path, CFG)
    with pytest.raises(ParamError, match="ZeRO-3 with gradient accumulation"):  # measured wrong on CPU: refused
        dpo_run(tmp_path, CFG | {"deepspeed": zero3_config, "micro_batch_size": 1})
    ds, policy = dpo_run(tmp_path, CFG | {"deepspeed": zero3_config})
    assert all(p.numel() == 0 for p in policy.parameters())  # ZeRO-3: this process holds no full weight
    assert close(plain, ds)
    # LoRA on a model loaded partitioned (the Llama-3-8B preset): the same losses as the plain LoRA run
    assert close(dpo_run(tmp_path, CFG, "lora")[0], dpo_run(tmp_path, CFG | {"deepspeed": zero3_config}, "lora")[0])
    with partitioned_loading(zero3_config):
        loaded, ref = policy_and_reference(tmp_path / "base", "frozen_copy")
    assert weight_copies(loaded, ref) == 2.0 and all(p.numel() == 0 for p in ref.parameters())
    with full_weights(policy):
        save_policy(policy, train_tokenizer(["a b c"] * 10, 300), tmp_path / "saved")
    saved = load_policy(tmp_path / "saved")
    for (name, a), b in zip(plain_policy.named_parameters(), saved.parameters()):
        assert torch.allclose(a, b, atol=1e-5), name


def test_deepspeed_checkpoint_resumes_to_the_same_losses(tmp_path):
    cfg = CFG | {"deepspeed": str(CONFIGS / "zero2.json")}
    full, _ = dpo_run(tmp_path, cfg, "lora", Checkpointer("policy@dpo", "f", 2))
    shutil.rmtree("checkpoints")
    with pytest.raises(Crash):
        dpo_run(tmp_path, cfg, "lora", Checkpointer("policy@dpo", "f", 2), CrashAt(step=7))
    tags = sorted(p.name for p in (tmp_path / "checkpoints" / "policy@dpo.deepspeed").glob("step*"))
    assert tags == ["step4", "step6"]  # the last two: a save killed halfway leaves the one before it
    resumed, _ = dpo_run(tmp_path, cfg, "lora", Checkpointer("policy@dpo", "f", 2))
    assert close(full, resumed, 1e-6)


def test_a_bf16_policy_gets_a_bf16_reference_and_reward_model(tmp_path):
    """With bf16 on, DeepSpeed trains the policy in bf16; the frozen reference copy is cast to it, so that at the
    first collection policy and reference log-probs are equal (KL 0), as they are in fp32."""
    config = json.loads((CONFIGS / "zero2.json").read_text()) | {"bf16": {"enabled": True}}
    path = tmp_path / "zero2_bf16.json"
    path.write_text(json.dumps(config))
    assert compute_dtype(None) is torch.float32 and compute_dtype(path) is torch.bfloat16
    assert compute_dtype(CONFIGS / "zero2.json") is (torch.bfloat16 if torch.cuda.is_available()
                                                      and torch.cuda.is_bf16_supported() else torch.float32)
    rm = frozen_model(tiny_model(seed=2), path)
    assert next(rm.parameters()).dtype is torch.bfloat16
    seed_everything(0)
    policy, ref = tiny_model(seed=1).train(), tiny_model(seed=1).requires_grad_(False)
    source = make_source(ALGORITHMS["rloo"], HP["rloo"], pairs=[], prompts=[[3 + i] for i in range(5)],
                         generation=GENERATION, reward_fn=reward_fn, tokenizer=TOKENIZER, seed=0, batch_size=4)
    cfg = loop_config(CFG | {"deepspeed": str(path), "iterations": 1})
    history = train_policy(ALGORITHMS["rloo"], HP["rloo"], cfg, 0, policy, frozen_model(ref, path), source)
    assert next(policy.parameters()).dtype is torch.bfloat16
    assert history[0]["kl_k1"] == 0.0 and history[0]["kl_k3"] == 0.0
    # a reference left in fp32 beside the bf16 policy would not start at KL 0
    seed_everything(0)
    policy, ref = tiny_model(seed=1).train(), tiny_model(seed=1).requires_grad_(False)
    source = make_source(ALGORITHMS["rloo"], HP["rloo"], pairs=[], prompts=[[3 + i] for i in range(5)],
                         generation=GENERATION, reward_fn=reward_fn, tokenizer=TOKENIZER, seed=0, batch_size=4)
    assert train_policy(ALGORITHMS["rloo"], HP["rloo"], cfg, 0, policy, ref, source)[0]["kl_k1"] != 0.0
