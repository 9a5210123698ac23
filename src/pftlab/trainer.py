"""The one policy-training loop: collect a batch from the algorithm's sample source, take
`steps_per_batch` passes of minibatch gradient steps on it, log, repeat `iterations` times.

Offline collection takes the next `batch_size` preference pairs (reshuffled each epoch); on-policy
collection samples k fresh responses per prompt from the current policy and scores them with the proxy
reward model. Reference and behaviour log-probs are computed once, at collection, without gradient.
"""
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from .errors import PftlabError
from .losses import kl_estimates
from .model import Sequences, ValueHead, batched, concat_sequences, pack, target_mask, token_logprobs
from .sampling import sample_responses


@dataclass
class PairBatch:
    chosen: Sequences
    rejected: Sequences
    ref_logp_chosen: torch.Tensor
    ref_logp_rejected: torch.Tensor
    reward_chosen: torch.Tensor = None  # proxy RM scores, for the offline methods that rank by the RM
    reward_rejected: torch.Tensor = None

    def __len__(self):
        return len(self.chosen)

    def select(self, index):
        pick = lambda x: None if x is None else x[index]
        return PairBatch(self.chosen.select(index), self.rejected.select(index), self.ref_logp_chosen[index],
                         self.ref_logp_rejected[index], pick(self.reward_chosen), pick(self.reward_rejected))


@dataclass
class SampleBatch:
    seqs: Sequences  # prompt-major: the k samples of prompt i are rows i*k .. i*k+k-1
    rewards: torch.Tensor  # proxy reward per sample
    old_token_logp: torch.Tensor  # log pi_behaviour per response token at collection, (B, L-1)
    ref_token_logp: torch.Tensor  # log pi_ref per response token, (B, L-1)
    k: int
    extra: dict = field(default_factory=dict)  # per-row tensors an algorithm's `prepare` adds (PPO: values, GAE)

    @property
    def old_logp(self):
        return self.old_token_logp.sum(-1)

    @property
    def ref_logp(self):
        return self.ref_token_logp.sum(-1)

    def __len__(self):
        return len(self.seqs) // self.k

    def select(self, prompt_index):
        rows = (prompt_index.unsqueeze(-1) * self.k + torch.arange(self.k)).reshape(-1)
        return SampleBatch(self.seqs.select(rows), self.rewards[rows], self.old_token_logp[rows],
                           self.ref_token_logp[rows], self.k, {name: v[rows] for name, v in self.extra.items()})


@dataclass
class HybridBatch:
    pairs: PairBatch  # pair i ...
    samples: SampleBatch  # ... and the unlabelled fresh samples of its prompt

    def __len__(self):
        return len(self.pairs)

    def select(self, index):
        return HybridBatch(self.pairs.select(index), self.samples.select(index))


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

    def collect(self, n: int, policy, ref) -> PairBatch:
        rows = [self.pairs[i] for i in self.next_indices(n)]
        chosen = pack([r["prompt_ids"] for r in rows], [r["chosen_ids"] for r in rows], self.pad_id)
        rejected = pack([r["prompt_ids"] for r in rows], [r["rejected_ids"] for r in rows], self.pad_id)
        ref_w = batched(lambda s: token_logprobs(ref, s).sum(-1), chosen)
        ref_l = batched(lambda s: token_logprobs(ref, s).sum(-1), rejected)
        if self.reward_fn is None:
            return PairBatch(chosen, rejected, ref_w, ref_l)
        return PairBatch(chosen, rejected, ref_w, ref_l, self.reward_fn(chosen), self.reward_fn(rejected))


def sample_and_score(policy, ref, prompts: list, k: int, generation: dict, reward_fn, eos_id: int, pad_id: int,
                     desc="on-policy samples") -> SampleBatch:
    """k fresh samples of pi per prompt, their proxy rewards, and behaviour / reference log-probs."""
    repeated = [p for p in prompts for _ in range(k)]
    responses = sample_responses(policy, repeated, generation["max_new_tokens"], generation["temperature"],
                                 generation["batch_size"], eos_id, pad_id, desc=desc)
    seqs = pack(repeated, responses, pad_id)
    old, entropy = batched(lambda s: torch.stack(token_logprobs(policy, s, with_entropy=True)), seqs, dim=1)
    ref_logp = batched(lambda s: token_logprobs(ref, s), seqs)
    rewards = reward_fn(seqs) if reward_fn is not None else torch.full((len(seqs),), float("nan"))
    return SampleBatch(seqs, rewards, old, ref_logp, k, {"entropy": entropy.sum(-1)})


class OnPolicySamples:
    """Yields batches of k fresh policy samples for each of `n` prompts, scored by the reward model.

    The prompts are those of the preference pairs, so offline and on-policy methods see the same prompts.
    """

    def __init__(self, prompts: list, k: int, generation: dict, reward_fn, tokenizer, seed: int):
        self.prompts, self.k, self.generation, self.reward_fn = prompts, k, generation, reward_fn
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self.rng = np.random.default_rng(seed)

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

    def collect(self, n: int, policy, ref) -> SampleBatch:
        n_offline = round(self.fraction * n)
        parts, offline = ([self.online.collect(n - n_offline, policy, ref)], [False]) if n - n_offline else ([], [])
        if n_offline:
            rows = [self.offline.pairs[i] for i in self.offline.next_indices(n_offline)]
            prompts = [r["prompt_ids"] for r in rows for _ in range(2)]
            responses = [ids for r in rows for ids in (r["chosen_ids"], r["rejected_ids"])]
            seqs = pack(prompts, responses, self.offline.pad_id)
            old, ref_logp = (batched(lambda s: token_logprobs(m, s), seqs) for m in (policy, ref))
            parts.append(SampleBatch(seqs, torch.tensor([math.inf, -math.inf] * n_offline), old, ref_logp, 2))
            offline.append(True)
        return concat_sample_batches(parts, self.offline.pad_id, offline)


def concat_sample_batches(parts: list, pad_id: int, offline: list) -> SampleBatch:
    width = max(p.seqs.input_ids.shape[1] for p in parts) - 1
    pad = lambda x: torch.nn.functional.pad(x, (0, width - x.shape[1]))
    flags = torch.cat([torch.full((len(p.seqs),), float(off)) for p, off in zip(parts, offline)])
    return SampleBatch(concat_sequences([p.seqs for p in parts], pad_id), torch.cat([p.rewards for p in parts]),
                       torch.cat([pad(p.old_token_logp) for p in parts]), torch.cat([pad(p.ref_token_logp) for p in parts]),
                       parts[0].k, {"offline": flags})


class HybridSource:
    """Offline pairs plus k unlabelled fresh samples for each pair's prompt (HyPO)."""

    def __init__(self, offline: OfflinePairs, k: int, generation: dict, tokenizer):
        self.offline, self.k, self.generation = offline, k, generation
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id

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
    fresh = batch.extra["offline"] == 0 if "offline" in batch.extra else torch.ones(len(batch.seqs), dtype=torch.bool)
    mask = target_mask(batch.seqs)[fresh]
    k1, k3 = kl_estimates(batch.old_token_logp[fresh], batch.ref_token_logp[fresh], mask)
    stats = {"proxy_reward": batch.rewards[fresh].mean().item(), "kl_k1": k1.mean().item(), "kl_k3": k3.mean().item(),
             "response_tokens": mask.sum().item() / len(mask)}
    if "entropy" in batch.extra:  # per token, of the policy that drew the samples
        stats["sample_entropy"] = batch.extra["entropy"][fresh].sum().item() / mask.sum().clamp(min=1).item()
    return stats


def train_policy(algorithm, hp: dict, cfg: dict, policy, ref, source, monitor=None, tracker=None, progress_desc="policy"):
    """Run the loop; returns the per-step history (list of dicts) for metrics and plots.

    `monitor(policy, ref) -> SampleBatch` draws fresh samples for sources that do not (offline ones),
    every `cfg["monitor_every"]` iterations, so every method logs the proxy reward and KL of its policy.
    """
    minibatches = math.ceil(cfg["batch_size"] / cfg["minibatch_size"])
    total_steps = cfg["iterations"] * cfg["steps_per_batch"] * minibatches
    state = {}
    if algorithm.value_head:
        state["value_head"] = ValueHead(policy.config.hidden_size)
    parameters = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapter only
    parameters += list(state["value_head"].parameters()) if algorithm.value_head else []
    optimizer = torch.optim.AdamW(parameters, lr=cfg["lr"], weight_decay=0.0)
    schedule = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.get("lr_schedule", "cosine")]
    scheduler = get_scheduler(schedule, optimizer, num_warmup_steps=cfg["warmup_steps"], num_training_steps=total_steps)
    shuffle = torch.Generator().manual_seed(cfg["seed"])
    history, step, samples_seen, tokens_seen = [], 0, 0, 0
    start = time.time()
    for iteration in tqdm(range(cfg["iterations"]), desc=progress_desc, disable=None):
        collect_start = time.time()
        policy.eval()
        batch = source.collect(cfg["batch_size"], policy, ref)
        collect_seconds = time.time() - collect_start
        extra = {}
        fresh = batch if isinstance(batch, SampleBatch) else getattr(batch, "samples", None)
        if fresh is not None:
            samples_seen += len(fresh.seqs)
            tokens_seen += int(target_mask(fresh.seqs).sum())
        if isinstance(batch, SampleBatch):
            extra = fresh_sample_stats(batch)
        elif monitor is not None and (iteration % cfg["monitor_every"] == 0 or iteration == cfg["iterations"] - 1):
            extra = fresh_sample_stats(monitor(policy, ref))
            collect_seconds = time.time() - collect_start
        if algorithm.prepare is not None:  # once per collected batch, e.g. PPO's values and GAE
            with torch.no_grad():
                batch, prepared = algorithm.prepare(policy, batch, hp, state)
            extra |= prepared
        policy.train()
        for _ in range(cfg["steps_per_batch"]):
            order = torch.randperm(len(batch), generator=shuffle)
            for mb_start in range(0, len(batch), cfg["minibatch_size"]):
                minibatch = batch.select(order[mb_start : mb_start + cfg["minibatch_size"]])
                loss, stats = algorithm.objective(policy, minibatch, hp, state)
                if not torch.isfinite(loss):
                    raise PftlabError(f"non-finite loss {loss.item()} at step {step} (iteration {iteration})")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, cfg["max_grad_norm"]).item()
                optimizer.step()
                scheduler.step()
                elapsed = time.time() - start
                row = {"step": step, "iteration": iteration, "loss": loss.item(), "grad_norm": grad_norm,
                       "lr": scheduler.get_last_lr()[0], "samples": samples_seen,
                       "samples_per_second": samples_seen / elapsed, "tokens_per_second": tokens_seen / elapsed,
                       "collect_seconds": collect_seconds, **extra, **stats}
                history.append(row)
                if tracker is not None:
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
                step += 1
    return history
