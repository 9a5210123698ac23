"""Where a policy algorithm's samples come from (the table's `samples` column): the offline preference
pairs, fresh samples of the current policy scored by the reward model, offline pairs mixed into on-policy
pairs, or pairs plus unlabelled fresh samples (HyPO). `make_source` picks one for an algorithm; the policy
stage and the token-level bandit both build their source through it."""
import contextlib
import math

import numpy as np
import torch

from pftlab.algorithms.losses import kl_estimates
from pftlab.core import distributed
from pftlab.core.errors import ParamError
from pftlab.core.params import check_batch
from pftlab.lm.model import batched, pack, pack_pairs, target_mask, token_logprobs
from pftlab.lm.sampling import sample_responses
from pftlab.training.batches import HybridBatch, PairBatch, SampleBatch, concat_sample_batches


class OfflinePairs:
    """Yields batches of preference pairs in a seeded order, a new permutation each epoch."""

    def __init__(self, pairs: list, pad_id: int, seed: int, reward_fn=None):
        self.pairs, self.pad_id, self.reward_fn = pairs, pad_id, reward_fn
        self.rng = np.random.default_rng(seed)
        self.order, self.position, self.epoch = self.rng.permutation(len(pairs)), 0, 0

    def next_indices(self, n: int):
        out = []
        while len(out) < n:
            if self.position == len(self.order):
                self.order, self.position, self.epoch = self.rng.permutation(len(self.pairs)), 0, self.epoch + 1
            take = min(n - len(out), len(self.order) - self.position)
            out += self.order[self.position : self.position + take].tolist()
            self.position += take
        return out

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "position": self.position,
                "epoch": self.epoch}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.position, self.epoch = np.array(state["order"]), state["position"], state["epoch"]

    def collect(self, n: int, policy, ref) -> PairBatch:
        rows = [self.pairs[i] for i in self.next_indices(n)]
        chosen, rejected = (s.to(policy) for s in pack_pairs(rows, self.pad_id))  # a batch lives where the policy does
        ref_w = batched(lambda s: token_logprobs(ref, s).sum(-1), chosen)
        ref_l = batched(lambda s: token_logprobs(ref, s).sum(-1), rejected)
        if self.reward_fn is None:
            return PairBatch(chosen, rejected, ref_w, ref_l)
        return PairBatch(chosen, rejected, ref_w, ref_l, self.reward_fn(chosen), self.reward_fn(rejected))


def sample_and_score(policy, ref, prompts: list, k: int, generation: dict, reward_fn, eos_id: int, pad_id: int,
                     desc="on-policy samples") -> SampleBatch:
    """k fresh samples of pi per prompt, their proxy rewards, and behaviour / reference log-probs: the one
    generation seam of every loop (docs/ARCHITECTURE.md, "Generation").

    Under several processes, each samples, scores and computes the log-probs of its own shard of the prompts
    (`distributed.shard`) under a seed of its own (`extra["sample_seed"]`), and the shards are gathered in
    order, so every process holds the whole batch and statistics over it are the whole batch's. Sampling time
    then falls with the number of processes. One process samples it all from the global generator, as ever.
    """
    world = distributed.world_size()
    if world == 1:
        return sample_shard(policy, ref, prompts, k, generation, reward_fn, eos_id, pad_id, desc=desc)
    if len(prompts) < world:
        raise ParamError(f"{len(prompts)} prompt(s) to sample cannot be shared by {world} processes: "
                         "raise policy.batch_size or use fewer processes")
    rank = distributed.rank()
    # a base from the global generator; the shard's own stream is forked off, so the global one moves as alone
    seed = shard_seed(int(torch.randint(2**62, (1,), device=torch.device("cpu"))), rank)
    share = distributed.shard(prompts, rank, world)
    # Every process runs as many forward passes (ZeRO-3 gathers weights at each): a short shard repeats its
    # last prompt, and those samples are dropped before the gather.
    even = share + share[-1:] * (-(-len(prompts) // world) - len(share))
    local = sample_shard(policy, ref, even, k, generation, reward_fn, eos_id, pad_id, seed=seed, desc=desc)
    if len(even) > len(share):
        local = local.select(torch.arange(len(share), device=local.rewards.device))
    parts = distributed.all_gather(local.to("cpu"))  # NCCL and gloo alike: picklable CPU tensors
    return concat_sample_batches(parts, pad_id).to(local.rewards.device)


def shard_seed(base: int, rank: int) -> int:
    """The sampling seed of process `rank`'s shard of one collection (below 2**63: stored as a long)."""
    return int(np.random.SeedSequence([base, rank]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def sample_shard(policy, ref, prompts: list, k: int, generation: dict, reward_fn, eos_id: int, pad_id: int,
                 seed: int = None, desc="on-policy samples") -> SampleBatch:
    """`sample_and_score` on these prompts in this process. With a `seed`, sampling draws from a stream of
    its own, seeded by it, and the global generator is left where it was."""
    repeated = [p for p in prompts for _ in range(k)]
    with _own_stream(seed):
        responses = sample_responses(policy, repeated, generation["max_new_tokens"], generation["temperature"],
                                     generation["batch_size"], eos_id, pad_id, desc=desc)
    seqs = pack(repeated, responses, pad_id).to(policy)
    old, entropy = batched(lambda s: torch.stack(token_logprobs(policy, s, with_entropy=True)), seqs, dim=1)
    ref_logp = batched(lambda s: token_logprobs(ref, s), seqs)
    rewards = reward_fn(seqs) if reward_fn is not None else torch.full((len(seqs),), float("nan"), device=seqs.input_ids.device)
    extra = {"entropy": entropy.sum(-1)}
    if seed is not None:
        extra["sample_seed"] = torch.full((len(seqs),), seed, dtype=torch.long, device=seqs.input_ids.device)
    return SampleBatch(seqs, rewards, old, ref_logp, k, extra)


@contextlib.contextmanager
def _own_stream(seed):
    if seed is None:
        yield
        return
    where = distributed.device()
    with torch.random.fork_rng(devices=[where] if where.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class OnPolicySamples:
    """Yields batches of k fresh policy samples for each of `n` prompts, scored by the reward model.

    The prompts are those of the preference pairs, so offline and on-policy methods see the same prompts.
    """

    def __init__(self, prompts: list, k: int, generation: dict, reward_fn, tokenizer, seed: int):
        self.prompts, self.k, self.generation, self.reward_fn = prompts, k, generation, reward_fn
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.rng = np.random.default_rng(seed)

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]

    def collect(self, n: int, policy, ref) -> SampleBatch:
        chosen = [self.prompts[i] for i in self.rng.choice(len(self.prompts), n, replace=False)]
        return sample_and_score(policy, ref, chosen, self.k, self.generation, self.reward_fn, self.eos_id, self.pad_id)


class MixedPairs:
    """On-policy DPO / IPO with a `fraction` of each batch drawn from the offline preference pairs.

    An offline pair becomes a group of two samples (chosen, rejected) with rewards +inf and -inf, so the
    pairwise objective ranks it by its label whatever the reward gap; `extra["offline"]` marks those rows
    so that fresh-sample statistics ignore them."""

    def __init__(self, online: OnPolicySamples, offline: OfflinePairs, fraction: float):
        self.online, self.offline, self.fraction = online, offline, fraction

    def state_dict(self):
        return {"online": self.online.state_dict(), "offline": self.offline.state_dict()}

    def load_state_dict(self, state):
        self.online.load_state_dict(state["online"])
        self.offline.load_state_dict(state["offline"])

    def collect(self, n: int, policy, ref) -> SampleBatch:
        n_offline = round(self.fraction * n)
        parts, offline = ([self.online.collect(n - n_offline, policy, ref)], [False]) if n - n_offline else ([], [])
        if n_offline:
            rows = [self.offline.pairs[i] for i in self.offline.next_indices(n_offline)]
            prompts = [r["prompt_ids"] for r in rows for _ in range(2)]
            responses = [ids for r in rows for ids in (r["chosen_ids"], r["rejected_ids"])]
            seqs = pack(prompts, responses, self.offline.pad_id).to(policy)
            old, ref_logp = (batched(lambda s: token_logprobs(m, s), seqs) for m in (policy, ref))
            labels = torch.tensor([math.inf, -math.inf] * n_offline, device=seqs.input_ids.device)
            parts.append(SampleBatch(seqs, labels, old, ref_logp, 2))
            offline.append(True)
        return concat_sample_batches(parts, self.offline.pad_id, offline)


class HybridSource:
    """Offline pairs plus k unlabelled fresh samples for each pair's prompt (HyPO)."""

    def __init__(self, offline: OfflinePairs, k: int, generation: dict, tokenizer):
        self.offline, self.k, self.generation = offline, k, generation
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

    def state_dict(self):
        return self.offline.state_dict()

    def load_state_dict(self, state):
        self.offline.load_state_dict(state)

    def collect(self, n: int, policy, ref) -> HybridBatch:
        pairs = self.offline.collect(n, policy, ref)
        prompts = [row[mask.bool()].tolist() for row, mask in zip(pairs.chosen.input_ids, pairs.chosen.attention_mask
                                                                   - pairs.chosen.response_mask)]
        samples = sample_and_score(policy, ref, prompts, self.k, self.generation, None, self.eos_id, self.pad_id,
                                   desc="unlabelled samples")
        return HybridBatch(pairs, samples)


def fresh_sample_stats(batch: SampleBatch) -> dict:
    """What every run logs about the current policy: proxy reward, response length, and reverse KL to the
    reference of fresh samples (k1 and k3 estimators, summed over tokens)."""
    fresh = (batch.extra["offline"] == 0 if "offline" in batch.extra
             else torch.ones(len(batch.seqs), dtype=torch.bool, device=batch.rewards.device))
    mask = target_mask(batch.seqs)[fresh]
    k1, k3 = kl_estimates(batch.old_token_logp[fresh], batch.ref_token_logp[fresh], mask)
    stats = {"proxy_reward": batch.rewards[fresh].mean().item(), "kl_k1": k1.mean().item(), "kl_k3": k3.mean().item(),
             "response_tokens": mask.sum().item() / len(mask)}
    if "entropy" in batch.extra:  # per token, of the policy that drew the samples
        stats["sample_entropy"] = batch.extra["entropy"][fresh].sum().item() / mask.sum().clamp(min=1).item()
    return stats



def make_source(algorithm, hp, *, pairs: list, prompts: list, generation: dict, reward_fn, tokenizer, seed: int,
                batch_size: int, batch_key: str = "policy.batch_size"):
    """The sample source of one algorithm of the table (`hp`: its typed hyperparameters), after checking that a
    batch fits the data.

    `pairs`: preference pairs (dicts of prompt_ids / chosen_ids / rejected_ids), `prompts`: the prompts that
    fresh samples are drawn for, `reward_fn(Sequences) -> rewards`: the proxy (or, didactic, true) reward."""
    if algorithm.source == "on_policy":
        check_batch(batch_key, batch_size, len(prompts), "training prompts")
        source = OnPolicySamples(prompts, algorithm.samples_per_prompt(hp), generation, reward_fn, tokenizer, seed)
        # on-policy DPO / IPO (the rows of pairs of samples, whose hyperparameters hold `offline_fraction`) with some
        # offline pairs in each batch
        if algorithm.pairs_of_samples and hp.offline_fraction > 0:
            check_batch(batch_key, batch_size, len(pairs), "preference pairs")
            source = MixedPairs(source, OfflinePairs(pairs, tokenizer.pad_token_id, seed), hp.offline_fraction)
        return source
    check_batch(batch_key, batch_size, len(pairs), "preference pairs")
    source = OfflinePairs(pairs, tokenizer.pad_token_id, seed, reward_fn if algorithm.needs_reward_model else None)
    if algorithm.source == "hybrid":
        return HybridSource(source, algorithm.samples_per_prompt(hp), generation, tokenizer)
    return source
