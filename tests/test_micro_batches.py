"""Micro-batches are exact: for every algorithm of the table, the gradient of one minibatch taken whole
equals the gradient accumulated over 4 micro-batches (the loop's own `step.accumulate`), to float
rounding. What depends on the whole minibatch (REINFORCE's baseline, PPO's token count, the kept pairs
of on-policy DPO / IPO) is computed once per step by the row's `begin_step`."""
import copy

import pytest
import torch

from pftlab.algorithms.table import ALGORITHMS
from pftlab.lm.model import ValueHead, pack, target_mask, token_logprobs
from pftlab.training.batches import HybridBatch, PairBatch, SampleBatch
from pftlab.training.config import OptimizerKnobs
from pftlab.training.optimization import Updater
from pftlab.training.step import accumulate
from tests.test_model import PAD, tiny_model

ROWS = 8  # prompts (or pairs) in the minibatch
HP = {"beta": 0.1, "temperature": 1.0, "max_weight": 10.0, "top": 1, "kl_coef": 0.05, "baseline_decay": 0.9,
      "min_reward_gap": 0.5, "offline_fraction": 0.0, "lam": 0.5, "length_penalty": 0.01, "kl_estimator": "k1",
      "adaptive_kl": True, "kl_target": 1.0, "kl_horizon": 100, "clip": 0.2, "value_clip": 0.2, "vf_coef": 0.1,
      "gamma": 1.0, "gae_lambda": 0.95}
CFG = OptimizerKnobs(lr=1e-3, warmup_steps=0, lr_schedule="constant", max_grad_norm=1.0)


def _seqs(n, g):
    """n prompt + response sequences with responses of 1 to 6 tokens, so token counts differ per row."""
    prompts = [torch.randint(3, 90, (2,), generator=g).tolist() for _ in range(n)]
    responses = [torch.randint(3, 90, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist()
                 for _ in range(n)]
    return pack(prompts, responses, PAD)


def _samples(model, n, k, g):
    seqs = _seqs(n * k, g)
    with torch.no_grad():
        old = token_logprobs(model, seqs)
    ref = (old - 0.3 * torch.rand(old.shape, generator=g)) * target_mask(seqs)
    return SampleBatch(seqs, torch.randn(n * k, generator=g), old, ref, k)


def _batch(model, algorithm, g):
    k = algorithm.samples_per_prompt(HP | {"samples_per_prompt": 2 if algorithm.name == "hypo" else 3})
    if algorithm.source == "on_policy":
        return _samples(model, ROWS, k, g)
    pairs = PairBatch(_seqs(ROWS, g), _seqs(ROWS, g), -10 * torch.rand(ROWS, generator=g),
                      -10 * torch.rand(ROWS, generator=g), torch.randn(ROWS, generator=g), torch.randn(ROWS, generator=g))
    return pairs if algorithm.source == "offline" else HybridBatch(pairs, _samples(model, ROWS, k, g))


def _gradient(algorithm, hp, model, state, batch, micro):
    model, state = copy.deepcopy(model), copy.deepcopy(state)
    parameters = list(model.parameters()) + (list(state["value_head"].parameters()) if "value_head" in state else [])
    updater = Updater(model, parameters, CFG, total_steps=1)
    rows = torch.arange(len(batch))
    if algorithm.begin_step is not None:
        algorithm.begin_step(batch.select(rows), hp, state)
    accumulate(updater, rows, lambda part: algorithm.objective(model, batch.select(part), hp, state), micro)
    return torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])


def _whole_and_split(name):
    algorithm = ALGORITHMS[name]
    g = torch.Generator().manual_seed(0)
    model = tiny_model(seed=1).train()
    hp = HP | {"samples_per_prompt": 2 if name == "hypo" else 3}
    state = {"baseline": 0.3}
    if algorithm.value_head:
        state["value_head"] = ValueHead(model.config.hidden_size)
    batch = _batch(model, algorithm, g)
    if algorithm.prepare is not None:
        with torch.no_grad():
            batch, _ = algorithm.prepare(model, batch, hp, state)
    whole = _gradient(algorithm, hp, model, state, batch, micro=ROWS)
    split = _gradient(algorithm, hp, model, state, batch, micro=ROWS // 4)
    return whole, split


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_gradient_is_the_same_whole_or_in_four_micro_batches(name):
    whole, split = _whole_and_split(name)
    assert whole.abs().max() > 0
    assert torch.allclose(whole, split, rtol=1e-4, atol=1e-6), f"{name}: max diff {(whole - split).abs().max():.3g}"


def test_the_check_can_fail_a_per_micro_batch_normaliser(monkeypatch):
    """Control: PPO without its step-level token count (a mean over each micro-batch's own tokens) is
    not exact on these rows of unequal length, so the test above can see the bug it guards against."""
    from pftlab.algorithms import table

    monkeypatch.setattr(table, "_share_correction", lambda *args: 1.0)
    whole, split = _whole_and_split("ppo")
    assert not torch.allclose(whole, split, rtol=1e-4, atol=1e-6)
