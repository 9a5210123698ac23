"""Two processes on the CPU (gloo, `torchrun --nproc_per_node 2`, one launch for the whole file).

On-policy collection is split: each process samples, scores and computes the log-probs of its shard of the
prompts under its own seed, and the shards are gathered. The union of the two processes' samples is what one
process draws with the same per-shard seeds, and RLOO and HyPO steps on the gathered batches are those of one
process given the same samples. Under ZeRO-3, a model is partitioned as it is loaded: each process holds half
of it from the start, and its memory never reaches the whole model's."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from pftlab.algorithms.table import ALGORITHMS
from pftlab.core import distributed
from pftlab.core.errors import ParamError
from pftlab.core.stage import seed_everything
from pftlab.training.batches import SampleBatch, concat_sample_batches
from pftlab.training.loop import train_policy
from pftlab.training.sources import sample_and_score, sample_shard
from tests.test_checkpoint import (
    CFG,
    GENERATION,
    HP,
    in_tmp_and_signals_restored,  # noqa: F401 - an autouse fixture, found by name
    loop_config,
    reward_fn,
)
from tests.test_model import EOS, PAD, tiny_model
from tests.two_process_run import PROMPTS, eos_prone

ROOT = Path(__file__).resolve().parents[1]
SPLIT = ("rloo", "hypo", "rloo_zero3")  # rloo_zero3: the policy and reference partitioned, an EOS-prone model


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    if shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("torchrun is not installed beside this python")
    out = tmp_path_factory.mktemp("ranks")
    torch.manual_seed(0)  # many layers (zero.Init builds one at a time) and about 200 MB: well above the overheads
    GPT2LMHeadModel(GPT2Config(vocab_size=4000, n_positions=64, n_embd=512, n_layer=16, n_head=8, bos_token_id=EOS,
                               eos_token_id=EOS, pad_token_id=PAD)).save_pretrained(out / "checkpoint")
    config = json.loads((ROOT / "configs" / "deepspeed" / "zero3.json").read_text())
    config["zero_optimization"]["stage3_param_persistence_threshold"] = 0  # partition even the small tensors
    (out / "zero3.json").write_text(json.dumps(config))
    # glibc returns freed full-size tensors (zero.Init builds each layer whole, then keeps a shard) to the system
    # at once, so that the peak measures what a process holds rather than what the allocator keeps for later
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2",
                          str(ROOT / "tests" / "two_process_run.py"), str(out), *SPLIT, "partitioned"],
                         capture_output=True, text=True, timeout=420, cwd=out, env=env)  # ~1 min; a hang: fail
    assert run.returncode == 0, run.stderr[-4000:]
    runs = {task: torch.load(out / f"{task}.pt", weights_only=False) for task in SPLIT}
    runs["partitioned"] = [json.loads((out / f"partitioned_rank{r}.json").read_text()) for r in range(2)]
    runs["model_mb"] = (out / "checkpoint" / "model.safetensors").stat().st_size / 2**20
    return runs


def fresh_samples(batch):
    return batch if hasattr(batch, "seqs") else batch.samples  # RLOO's SampleBatch, HyPO's HybridBatch


def test_shards_are_contiguous_and_cover_the_prompts_once():
    items = list(range(7))
    for world in (1, 2, 3, 7):
        shards = [distributed.shard(items, r, world) for r in range(world)]
        assert sum(shards, []) == items
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


def prompts_of(batch: SampleBatch, k: int) -> list:
    rows = batch.seqs.attention_mask - batch.seqs.response_mask
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch.seqs.input_ids[::k], rows[::k])]


def test_the_union_of_both_processes_samples_is_one_process_draw_with_their_seeds(two_process_runs):
    k = HP["rloo"].samples_per_prompt
    batches = [fresh_samples(b) for b in two_process_runs["rloo"]["batches"]]
    gathered = batches[0]
    seeds = gathered.extra["sample_seed"].tolist()
    per_shard = list(dict.fromkeys(seeds))  # in order of appearance: rank 0's, then rank 1's
    assert len(per_shard) == 2, "each process samples under its own seed"
    assert seeds == [per_shard[0]] * (len(seeds) // 2) + [per_shard[1]] * (len(seeds) // 2)
    assert not set(per_shard) & set(batches[1].extra["sample_seed"].tolist())  # the next collection: other seeds
    # the gathered prompts are those the source chose, in its order (OnPolicySamples: seed 0, 4 of 5 prompts)
    chosen = np.random.default_rng(0).choice(len(PROMPTS), CFG["batch_size"], replace=False)
    prompts = prompts_of(gathered, k)
    assert prompts == [PROMPTS[i] for i in chosen]
    policy, ref = tiny_model(seed=1), tiny_model(seed=1)  # the policy before any step: what drew the first batch
    shards = [sample_shard(policy, ref, distributed.shard(prompts, r, 2), k, GENERATION, reward_fn, EOS, PAD,
                           seed=seed) for r, seed in enumerate(per_shard)]
    alone = concat_sample_batches(shards, PAD)
    assert torch.equal(alone.seqs.input_ids, gathered.seqs.input_ids)
    assert torch.equal(alone.seqs.response_mask, gathered.seqs.response_mask)
    assert torch.equal(alone.rewards, gathered.rewards)
    for name in ("old_token_logp", "ref_token_logp"):
        assert torch.allclose(getattr(alone, name), getattr(gathered, name), atol=1e-6)


def test_hypos_gathered_samples_line_up_with_their_pairs(two_process_runs):
    k = HP["hypo"].samples_per_prompt
    for batch in two_process_runs["hypo"]["batches"]:
        pair_rows = batch.pairs.chosen.attention_mask - batch.pairs.chosen.response_mask
        pair_prompts = [ids[mask.bool()].tolist() for ids, mask in zip(batch.pairs.chosen.input_ids, pair_rows)]
        assert prompts_of(batch.samples, k) == pair_prompts


def test_zero3_keeps_processes_in_step_when_their_samples_end_apart(two_process_runs):
    """Under ZeRO-3 every forward pass gathers weights from all processes: one whose samples have all ended keeps
    stepping (`generate(synced_gpus=True)`), and a short shard samples as many prompts (3 prompts over 2 processes)."""
    run = two_process_runs["rloo_zero3"]
    k = HP["rloo"].samples_per_prompt
    lengths = [[int(b.seqs.response_mask[half].sum(-1).max()) for half in (slice(0, len(b.seqs) // 2),
                                                                            slice(len(b.seqs) // 2, None))]
               for b in run["batches"]]
    assert any(a != b for a, b in lengths), f"the shards' longest samples did not differ: {lengths}"
    assert run["uneven_rows"] == 3 * 2
    assert len(run["batches"]) == CFG["iterations"] and all(len(b.seqs) == CFG["batch_size"] * k for b in run["batches"])


class Replay:
    """The batches the two processes gathered, handed to a one-process loop in the same order."""

    def __init__(self, batches):
        self.batches = list(batches)

    def collect(self, n, policy, ref):
        return self.batches.pop(0)

    def state_dict(self):
        return {}


@pytest.mark.parametrize("task", SPLIT)
def test_steps_on_the_gathered_samples_are_the_one_process_steps(two_process_runs, task):
    run, name = two_process_runs[task], task.removesuffix("_zero3")
    assert all(len(fresh_samples(b).extra["sample_seed"].unique()) == 2 for b in run["batches"])
    seed_everything(0)
    policy, ref = tiny_model(seed=1).train(), tiny_model(seed=1).requires_grad_(False)
    if task.endswith("_zero3"):
        policy, ref = eos_prone(policy), eos_prone(ref)
    history = train_policy(ALGORITHMS[name], HP[name], loop_config(CFG), 0, policy, ref, Replay(run["batches"]))
    assert len(history) == len(run["history"]) == 12
    for alone, ranks in zip(history, run["history"]):
        for key in ("loss", "grad_norm", "proxy_reward", "kl_k1"):
            if key in alone:
                assert ranks[key] == pytest.approx(alone[key], rel=1e-5, abs=1e-6), key
    assert_same_weights(run["weights"], policy.state_dict(), tiny_model(seed=1).state_dict(), steps=len(history))


def assert_same_weights(ranks: dict, alone: dict, start: dict, steps: int):
    """Weights after `steps` steps of two float32 runs that sum in another order: each tensor's difference is
    bounded by what that order can produce, a small share of how far the tensor moved. Measured on this CPU: at
    most 9e-5 of it after 12 steps (an attention bias 1.2e-5 apart in absolute terms). Adam turns a
    rounding-sized gradient difference on a near-zero gradient into an lr-sized step, so a fixed absolute
    bound is broken by rounding alone; a real difference in the gradient (13% from unequal process weights,
    say) moves weights by a large share of their movement."""
    for key, value in alone.items():
        moved = (value - start[key]).norm().item()
        off = (ranks[key] - value).norm().item()
        assert off <= 1e-6 + 3e-3 * moved, f"{key}: {off:.3g} apart after {steps} steps, {moved:.3g} moved"


def test_too_few_prompts_for_the_processes_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ParamError, match="3 prompt"):
        sample_and_score(tiny_model(), tiny_model(), [[3], [4], [5]], 2, GENERATION, reward_fn, EOS, PAD)


def test_zero3_loading_partitions_the_model_as_it_is_read(two_process_runs):
    """What fails if loading is not partitioned: the weights are not shards from the start, nor half each. The
    memory bound says that no process ever held the whole model in memory of its own while loading (plain loading
    on the CPU maps the file and owns nothing; on a GPU it copies the whole model to every device)."""
    ranks, model_mb = two_process_runs["partitioned"], two_process_runs["model_mb"]
    for rank in ranks:
        assert rank["partitioned_at_load"], "every weight is a ZeRO-3 shard before deepspeed.initialize"
        assert rank["held"] * 2 == rank["full"]  # half of every tensor each
        assert rank["same_weights"], "the shards gathered are the checkpoint's weights"
        assert 0 < rank["peak_mb"] < 0.75 * model_mb, (rank["peak_mb"], model_mb)
