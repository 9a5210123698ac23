"""Exact under every split: for every algorithm of the table, SFT and the reward model, one minibatch taken
whole and the same minibatch split into micro-batches of (3, 3, 2), (5, 3) and 8 x 1 rows, or over two gloo
processes (a 7-row minibatch: shares of 4 and 3 rows), give the same gradient and log the same loss and
stats (`step.accumulate`, the one rule). Rows have responses of unequal length, so a per-micro-batch token
mean would differ; on-policy DPO / IPO drop pairs by `min_reward_gap` so that a micro-batch and a process
keep none."""
import copy
import os

import pytest
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification

from pftlab.algorithms.table import ALGORITHMS
from pftlab.lm.model import ValueHead, pack, target_mask, token_logprobs
from pftlab.training import step
from pftlab.training.batches import HybridBatch, PairBatch, SampleBatch
from pftlab.training.optimization import Updater
from pftlab.training.supervised import reward_model_batch_loss, sft_batch_loss, sft_units
from tests.test_algorithms import typed_hp
from tests.test_model import EOS, PAD, tiny_model

HP = {"beta": 0.1, "temperature": 1.0, "max_weight": 10.0, "top": 1, "kl_coef": 0.05, "baseline_decay": 0.9,
      "min_reward_gap": 0.5, "offline_fraction": 0.0, "lam": 0.5, "length_penalty": 0.01, "kl_estimator": "k1",
      "adaptive_kl": True, "kl_target": 1.0, "kl_horizon": 100, "clip": 0.2, "value_clip": 0.2, "vf_coef": 0.1,
      "gamma": 1.0, "gae_lambda": 0.95, "length_normalise": True}
CASES = [*ALGORITHMS, "sft", "reward_model", "ipo_summed", "online_ipo_summed"]
SPLITS = {"3+3+2": 3, "5+3": 5, "8x1": 1}
DROPPED = {0, 1, 2, 3, 5}  # on-policy DPO / IPO pairs closer than min_reward_gap: micro-batch (0, 1, 2) keeps
# none, and of 7 rows the second process's share (1, 3, 5) keeps none


def _lengths(n, g):
    return [int(torch.randint(1, 7, (1,), generator=g)) for _ in range(n)]


def _seqs(n, g):
    """n prompt + response sequences with responses of 1 to 6 tokens, so token counts differ per row."""
    prompts = [torch.randint(3, 90, (2,), generator=g).tolist() for _ in range(n)]
    return pack(prompts, [torch.randint(3, 90, (m,), generator=g).tolist() for m in _lengths(n, g)], PAD)


def _samples(model, n, k, g, rewards=None):
    seqs = _seqs(n * k, g)
    with torch.no_grad():
        old = token_logprobs(model, seqs)
    ref = (old - 0.3 * torch.rand(old.shape, generator=g)) * target_mask(seqs)
    return SampleBatch(seqs, torch.randn(n * k, generator=g) if rewards is None else rewards, old, ref, k)


def _online_pair_rewards(n):
    """Rewards of n prompts x 2 samples: the pairs in DROPPED differ by 0.1 (< min_reward_gap), the others by 2;
    the first sample wins on even rows, the second on odd ones."""
    rewards = [(0.0, 0.1) if i in DROPPED else (1.0, -1.0) if i % 2 == 0 else (-1.0, 1.0) for i in range(n)]
    return torch.tensor(rewards).view(-1)


def _batch(model, algorithm, rows, g):
    k = 2 if algorithm.pairs_of_samples or algorithm.name == "hypo" else 3
    if algorithm.pairs_of_samples:
        return _samples(model, rows, 2, g, _online_pair_rewards(rows))
    if algorithm.source == "on_policy":
        return _samples(model, rows, k, g)
    pairs = PairBatch(_seqs(rows, g), _seqs(rows, g), -10 * torch.rand(rows, generator=g),
                      -10 * torch.rand(rows, generator=g), torch.randn(rows, generator=g), torch.randn(rows, generator=g))
    return pairs if algorithm.source == "offline" else HybridBatch(pairs, _samples(model, rows, k, g))


class Summing:
    """The plain updater's backward (`Updater.backward` without DeepSpeed), with no optimizer step: the
    gradients stay for the test (Updater itself refuses several processes without DeepSpeed)."""

    def __init__(self, parameters):
        self.parameters = parameters

    def zero_grad(self):
        for p in self.parameters:
            p.grad = None

    backward = Updater.backward
    engine = None


def case(name: str, rows: int):
    """A fresh model (and value head), a minibatch of `rows`, and (parameters, rows, loss_fn, units) for
    `step.accumulate`: the same numbers in every process that builds it."""
    g = torch.Generator().manual_seed(0)
    if name in ("sft", "reward_model"):
        lengths, prompts = _lengths(rows, g), [torch.randint(3, 90, (2,), generator=g).tolist() for _ in range(rows)]
        if name == "sft":
            model = tiny_model(seed=1).train()
            examples = [(p, torch.randint(3, 90, (m,), generator=g).tolist() + [EOS]) for p, m in zip(prompts, lengths)]
            return list(model.parameters()), examples, sft_batch_loss(model, PAD), sft_units(PAD)
        torch.manual_seed(1)
        model = GPT2ForSequenceClassification(GPT2Config(vocab_size=100, n_positions=32, n_embd=16, n_layer=2,
                                                         n_head=2, num_labels=1, resid_pdrop=0.0, embd_pdrop=0.0,
                                                         attn_pdrop=0.0, bos_token_id=EOS, eos_token_id=EOS,
                                                         pad_token_id=PAD)).train()
        pairs = [{"prompt_ids": p, "chosen_ids": torch.randint(3, 90, (m,), generator=g).tolist() + [EOS],
                  "rejected_ids": torch.randint(3, 90, (7 - m,), generator=g).tolist() + [EOS]}
                 for p, m in zip(prompts, lengths)]
        return list(model.parameters()), pairs, reward_model_batch_loss(model, PAD), len
    algorithm = ALGORITHMS[name.removesuffix("_summed")]
    hp = typed_hp(algorithm.name, HP | {"samples_per_prompt": 2 if algorithm.name == "hypo" else 3,
                                        "length_normalise": "summed" not in name})
    model = tiny_model(seed=1).train()
    state = {"baseline": 0.3}
    if algorithm.value_head:
        torch.manual_seed(2)
        state["value_head"] = ValueHead(model.config.hidden_size)
    batch = _batch(model, algorithm, rows, g)
    if algorithm.prepare is not None:
        with torch.no_grad():
            batch, _ = algorithm.prepare(model, batch, hp, state)
    index = torch.arange(len(batch))
    if algorithm.begin_step is not None:
        algorithm.begin_step(batch.select(index), hp, state)
    parameters = list(model.parameters()) + (list(state["value_head"].parameters()) if algorithm.value_head else [])
    return (parameters, index, lambda part: algorithm.objective(model, batch.select(part), hp, state),
            lambda part: algorithm.units(batch.select(part), hp))


def flat_gradient(parameters) -> torch.Tensor:
    return torch.cat([torch.zeros(p.numel()) if p.grad is None else p.grad.flatten() for p in parameters])


def gradient_loss_stats(name: str, rows: int, micro: int):
    """This process's weighted gradient, and the loss and stats `accumulate` logs, for one minibatch."""
    parameters, index, loss_fn, units = case(name, rows)
    updater = Summing(parameters)
    loss, stats = step.accumulate(updater, index, loss_fn, micro, units)
    grad = flat_gradient(parameters)
    return grad, loss, stats


def assert_same(whole, split, where):
    (g_whole, loss_whole, stats_whole), (g_split, loss_split, stats_split) = whole, split
    assert g_whole.abs().max() > 0
    assert (g_whole - g_split).abs().max() <= 1e-5 * g_whole.abs().max(), \
        f"{where}: gradient off by {(g_whole - g_split).abs().max() / g_whole.abs().max():.2g} (relative)"
    assert loss_split == pytest.approx(loss_whole, rel=1e-5, abs=1e-7), f"{where}: loss"
    assert set(stats_split) == set(stats_whole), f"{where}: {set(stats_split) ^ set(stats_whole)}"
    for key, value in stats_whole.items():
        assert stats_split[key] == pytest.approx(value, rel=1e-5, abs=1e-6), f"{where}: {key}"


@pytest.mark.parametrize("name", CASES)
def test_micro_batches_give_the_whole_minibatchs_gradient_loss_and_stats(name):
    whole = gradient_loss_stats(name, 8, micro=8)
    for split_name, micro in SPLITS.items():
        assert_same(whole, gradient_loss_stats(name, 8, micro), f"{name}, micro-batches {split_name}")


def test_the_check_sees_a_per_micro_batch_normaliser(monkeypatch):
    """Control: weighing micro-batches by rows instead of by the loss's unit (tokens for PPO and SFT, kept
    pairs for on-policy DPO) is not exact on these rows, so the test above can fail."""
    for name in ("ppo", "sft", "online_dpo"):
        whole = gradient_loss_stats(name, 8, micro=8)
        parameters, index, loss_fn, _ = case(name, 8)
        updater = Summing(parameters)
        step.accumulate(updater, index, loss_fn, 3, len)
        by_rows = flat_gradient(parameters)
        assert (whole[0] - by_rows).abs().max() > 1e-3 * whole[0].abs().max(), name


def test_the_online_pairs_minibatch_really_drops_pairs_where_it_should():
    """What the on-policy DPO cases exercise: a micro-batch (0, 1, 2) and a process share (1, 3, 5) with no pair kept."""
    _, index, loss_fn, units = case("online_dpo", 8)
    assert units(index) == 8 - len(DROPPED)
    assert units(index[:3]) == 0 and units(index[:7][1::2]) == 0
    loss, stats = loss_fn(index[:3])
    assert loss.item() == 0 and set(stats) == {"entropy", "pairs_kept"}


def _two_process_worker(rank, store, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    results = {}
    for name in CASES:
        for micro in (4, 1):  # each process's share whole, and one row at a time (3 rows pad to 4 parts)
            grad, loss, stats = gradient_loss_stats(name, 7, micro)
            torch.distributed.all_reduce(grad)  # what DeepSpeed does with the processes' gradients: their mean
            results[name, micro] = (grad / 2, loss, stats)
    if rank == 0:
        torch.save(results, out)
    torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gloo")
    torch.multiprocessing.spawn(_two_process_worker, args=(str(tmp / "store"), str(tmp / "out.pt")), nprocs=2)
    return torch.load(tmp / "out.pt", weights_only=False)


@pytest.mark.parametrize("name", CASES)
def test_two_processes_with_unequal_shares_give_the_whole_minibatchs_step(two_processes, name):
    whole = gradient_loss_stats(name, 7, micro=7)
    for micro in (4, 1):
        assert_same(whole, two_processes[name, micro], f"{name}, 2 processes, micro-batches of {micro}")


def test_every_process_runs_as_many_micro_batches():
    """7 rows over 2 processes, micro-batches of 1: shares of 4 and 3, padded to 4 parts, the pad counting 0."""
    rows = list(range(7))
    first, second = (step.process_parts(rows, 1, r, 2) for r in (0, 1))
    assert [p for p, _ in first] == [[0], [2], [4], [6]] and all(c for _, c in first)
    assert [p for p, _ in second] == [[1], [3], [5], [0]] and [c for _, c in second] == [True, True, True, False]
    assert step.process_parts([0], 2, 1, 2) == [([0], False)]  # a process with no row still steps with the others


def test_a_non_finite_micro_batch_ends_the_step_with_a_nan_loss():
    """A NaN in a micro-batch that counts for nothing (no pair kept) still makes the step's loss NaN (so it is
    skipped), and nothing after it is back-propagated: a later micro-batch cannot close the step on a partial
    gradient."""
    parameters, index, loss_fn, units = case("online_dpo", 8)
    backward_calls = []

    class Recording(Summing):
        def backward(self, loss, weight=1.0, last=True):
            backward_calls.append(last)

    def nan_in_the_first(part):
        loss, stats = loss_fn(part)
        return (loss * float("nan") if part[0] == 0 else loss), stats

    loss, stats = step.accumulate(Recording(parameters), index, nan_in_the_first, 3, units)
    assert loss != loss and "loss" not in stats and backward_calls == []
    assert step._mean([(float("inf"), 2), (float("-inf"), 1)]) != step._mean([(1.0, 1)])  # no fsum ValueError


def test_mean_keeps_its_count_through_pickle_and_copy():
    import pickle

    from pftlab.algorithms.losses import Mean

    for twin in (pickle.loads(pickle.dumps(Mean(0.25, 3))), copy.deepcopy(Mean(0.25, 3))):
        assert twin == 0.25 and twin.count == 3 and isinstance(twin, Mean)


def test_skipping_non_finite_steps_under_deepspeed_micro_batches_is_refused():
    from pftlab.core.errors import ParamError
    from tests.test_checkpoint import CFG, loop_config

    cfg = loop_config(CFG | {"skip_nonfinite_steps": 1})
    with pytest.raises(ParamError, match="skip_nonfinite_steps"):
        Updater(tiny_model(), list(tiny_model().parameters()), cfg, 4, accumulation=2, deepspeed="configs/deepspeed/zero2.json")
