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

from . import checkpoint, optimization
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

    def state_dict(self):
        return {"rng": self.rng.bit_generator.state, "order": self.order.tolist(), "position": self.position,
                "epoch": self.epoch}

    def load_state_dict(self, state):
        self.rng.bit_generator.state = state["rng"]
        self.order, self.position, self.epoch = np.array(state["order"]), state["position"], state["epoch"]

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
    fresh = batch.extra["offline"] == 0 if "offline" in batch.extra else torch.ones(len(batch.seqs), dtype=torch.bool)
    mask = target_mask(batch.seqs)[fresh]
    k1, k3 = kl_estimates(batch.old_token_logp[fresh], batch.ref_token_logp[fresh], mask)
    stats = {"proxy_reward": batch.rewards[fresh].mean().item(), "kl_k1": k1.mean().item(), "kl_k3": k3.mean().item(),
             "response_tokens": mask.sum().item() / len(mask)}
    if "entropy" in batch.extra:  # per token, of the policy that drew the samples
        stats["sample_entropy"] = batch.extra["entropy"][fresh].sum().item() / mask.sum().clamp(min=1).item()
    return stats


def train_policy(algorithm, hp: dict, cfg: dict, policy, ref, source, monitor=None, tracker=None, progress_desc="policy",
                 checkpointer=None):
    """Run the loop; returns the per-step history (list of dicts) for metrics and plots.

    `monitor(policy, ref) -> SampleBatch` draws fresh samples for sources that do not (offline ones),
    every `cfg["monitor_every"]` iterations, so every method logs the proxy reward and KL of its policy.
    With a `checkpointer`, the loop resumes from its checkpoint and checkpoints after optimizer steps:
    where it is (iteration, pass, minibatch, the collected batch) is `run`, saved with the weights,
    optimizer, scheduler, algorithm state, sample source and every random stream.
    """
    minibatches = math.ceil(cfg["batch_size"] / cfg["minibatch_size"])
    total_steps = cfg["iterations"] * cfg["steps_per_batch"] * minibatches
    state = {}
    if algorithm.value_head:
        state["value_head"] = ValueHead(policy.config.hidden_size)
    parameters = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapter only
    parameters += list(state["value_head"].parameters()) if algorithm.value_head else []
    rank, world = optimization.rank(), optimization.world_size()
    micro = cfg.get("micro_batch_size") or max(1, cfg["minibatch_size"] // world)  # default: no accumulation
    if cfg["minibatch_size"] % (micro * world):
        raise PftlabError(f"params.yaml: 'policy.minibatch_size' ({cfg['minibatch_size']}) must be a multiple of "
                          f"'policy.micro_batch_size' ({micro}) x {world} processes")
    accumulation = cfg["minibatch_size"] // (micro * world)
    modules = {k: v for k, v in state.items() if isinstance(v, torch.nn.Module)}
    model = torch.nn.ModuleDict({"policy": policy, **modules}) if modules else policy  # what DeepSpeed wraps
    updater = optimization.Updater(model, parameters, cfg, total_steps, accumulation, micro)
    shuffle = torch.Generator().manual_seed(cfg["seed"])
    max_skipped = cfg.get("skip_nonfinite_steps", 0)
    run = {"iteration": 0, "pass": 0, "minibatch": 0, "order": None, "batch": None, "extra": {}, "collect_seconds": 0.0,
           "samples": 0, "tokens": 0, "elapsed": 0.0, "step": 0, "skipped": 0, "history": []}
    if checkpointer is not None:
        updater.engine_dir = checkpoint.engine_dir(checkpointer.stage)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        _restore(saved, run, policy, state, updater, shuffle, source)
    history, start = run["history"], time.time() - run["elapsed"]

    def snapshot():
        run["elapsed"] = time.time() - start
        return _snapshot(run, policy, state, updater, shuffle, source)

    bar = tqdm(total=cfg["iterations"], initial=run["iteration"], desc=progress_desc, disable=None)
    while run["iteration"] < cfg["iterations"]:
        iteration = run["iteration"]
        if run["batch"] is None:
            run["batch"], run["extra"], run["collect_seconds"] = _collect(algorithm, hp, cfg, policy, ref, source, monitor,
                                                                         state, run)
        batch = run["batch"]
        policy.train()
        while run["pass"] < cfg["steps_per_batch"]:
            if run["order"] is None:
                run["order"] = torch.randperm(len(batch), generator=shuffle)
            while run["minibatch"] * cfg["minibatch_size"] < len(batch):
                mb_start = run["minibatch"] * cfg["minibatch_size"]
                # this process's share of the minibatch (all of it on one device), in micro-batches
                rows = run["order"][mb_start : mb_start + cfg["minibatch_size"]][rank::world]
                updater.zero_grad()
                losses, parts_stats = [], []
                parts = rows.split(micro)
                for i, part in enumerate(parts):
                    part_loss, part_stats = algorithm.objective(policy, batch.select(part), hp, state)
                    if optimization.all_finite(part_loss):
                        updater.backward(part_loss, len(part) / len(rows), last=i == len(parts) - 1)
                    losses.append(part_loss.item())
                    parts_stats.append(part_stats)
                loss, stats = sum(losses) / len(losses), parts_stats[0]
                if len(parts_stats) > 1:  # the minibatch's stats: the mean over its micro-batches
                    stats = {k: sum(s[k] for s in parts_stats) / len(parts_stats) for k in stats}
                loss, *means = optimization.mean_over_processes([loss, *stats.values()], len(rows))
                stats, finite = dict(zip(stats, means)), math.isfinite(loss)
                grad_norm = updater.step() if finite else float("nan")
                step = run["step"]
                if not math.isfinite(grad_norm):  # a non-finite loss or gradient: the update is skipped, or we stop
                    run["skipped"] += 1
                    if run["skipped"] > max_skipped:
                        where = checkpointer.describe_last() if checkpointer is not None else "no checkpointing"
                        raise PftlabError(f"non-finite {'loss' if not finite else 'gradient'} at step {step} "
                                          f"(iteration {iteration}); {run['skipped']} non-finite step(s), "
                                          f"policy.skip_nonfinite_steps allows {max_skipped}; {where}")
                    if not finite:
                        updater.skip()
                elapsed = time.time() - start
                row = {"step": step, "iteration": iteration, "loss": loss, "grad_norm": grad_norm,
                       "lr": updater.lr, "samples": run["samples"],
                       "samples_per_second": run["samples"] / elapsed, "tokens_per_second": run["tokens"] / elapsed,
                       "collect_seconds": run["collect_seconds"], **run["extra"], **stats}
                if max_skipped:
                    row["skipped_steps"] = run["skipped"]
                if updater.engine is not None:  # what DeepSpeed really ran (read from its engine)
                    row |= {"zero_stage": updater.engine.zero_optimization_stage(),
                            "accumulation_steps": updater.engine.gradient_accumulation_steps()}
                history.append(row)
                if tracker is not None:
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
                run["step"], run["minibatch"] = step + 1, run["minibatch"] + 1
                if checkpointer is not None:
                    checkpointer.step_done(run["step"], snapshot)
            run["pass"], run["order"], run["minibatch"] = run["pass"] + 1, None, 0
        run["iteration"], run["pass"], run["batch"] = iteration + 1, 0, None
        bar.update(1)
    bar.close()
    return history


def _collect(algorithm, hp, cfg, policy, ref, source, monitor, state, run):
    """One collection: the batch, the per-iteration stats that go with it, and its wall time."""
    iteration, collect_start = run["iteration"], time.time()
    policy.eval()
    batch = source.collect(cfg["batch_size"], policy, ref)
    collect_seconds = time.time() - collect_start
    extra = {}
    fresh = batch if isinstance(batch, SampleBatch) else getattr(batch, "samples", None)
    if fresh is not None:
        run["samples"] += len(fresh.seqs)
        run["tokens"] += int(target_mask(fresh.seqs).sum())
    if isinstance(batch, SampleBatch):
        extra = fresh_sample_stats(batch)
    elif monitor is not None and (iteration % cfg["monitor_every"] == 0 or iteration == cfg["iterations"] - 1):
        extra = fresh_sample_stats(monitor(policy, ref))
        collect_seconds = time.time() - collect_start
    if algorithm.prepare is not None:  # once per collected batch, e.g. PPO's values and GAE
        with torch.no_grad():
            batch, prepared = algorithm.prepare(policy, batch, hp, state)
        extra |= prepared
    return batch, extra, collect_seconds


_BATCH_TYPES = {"PairBatch": PairBatch, "SampleBatch": SampleBatch, "HybridBatch": HybridBatch, "Sequences": Sequences}


def _snapshot(run, policy, state, updater, shuffle, source) -> dict:
    weights = checkpoint.trainable_state(policy) if updater.engine is None else {}  # DeepSpeed: in its checkpoint
    return {"step": run["step"], "run": checkpoint.to_tree(run), "policy": weights,
            "algorithm_state": {k: v.state_dict() if isinstance(v, torch.nn.Module) else v for k, v in state.items()
                                if updater.engine is None or not isinstance(v, torch.nn.Module)},
            "updater": updater.state_dict(), "rng": checkpoint.rng_state(shuffle), "source": source.state_dict()}


def _restore(saved, run, policy, state, updater, shuffle, source):
    run.update(checkpoint.from_tree(saved["run"], _BATCH_TYPES))
    if saved["policy"]:
        checkpoint.load_trainable_state(policy, saved["policy"])
    for k, v in saved["algorithm_state"].items():
        if isinstance(state.get(k), torch.nn.Module):
            state[k].load_state_dict(v)
        else:
            state[k] = v
    updater.load_state_dict(saved["updater"])
    checkpoint.set_rng_state(saved["rng"], shuffle)
    source.load_state_dict(saved["source"])
