"""The one policy-training loop: collect a batch from the algorithm's sample source, take
`steps_per_batch` passes of minibatch gradient steps on it, log, repeat `iterations` times.

Offline collection takes the next `batch_size` preference pairs (reshuffled each epoch); on-policy
collection samples k fresh responses per prompt from the current policy and scores them with the proxy
reward model (`sources.py`). Reference and behaviour log-probs are computed once, at collection, without
gradient; what an algorithm needs once per collected batch (`prepare`) or once per optimizer step
(`begin_step`) is computed there, never per micro-batch. Each step is `step.training_step`.
"""
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from pftlab.core import checkpoint, distributed, train_state
from pftlab.lm.model import ValueHead, target_mask
from pftlab.training import optimization
from pftlab.training.batches import BATCH_TYPES, SampleBatch
from pftlab.training.config import LoopKnobs
from pftlab.training.sources import fresh_sample_stats
from pftlab.training.step import NonFiniteSteps, micro_batching, training_step


@dataclass
class LoopPosition:
    """Where the loop is, down to the collected batch: what a checkpoint saves and a resume restores whole."""
    iteration: int = 0
    pass_: int = 0  # pass over the collected batch (of steps_per_batch)
    minibatch: int = 0
    order: torch.Tensor = None  # the pass's row permutation
    batch: object = None  # the collected batch (PairBatch / SampleBatch / HybridBatch), None between collections
    extra: dict = field(default_factory=dict)  # per-collection stats logged with every step of it
    collect_seconds: float = 0.0
    samples: int = 0  # fresh samples drawn so far
    tokens: int = 0
    elapsed: float = 0.0
    step: int = 0
    skipped: int = 0
    history: list = field(default_factory=list)


def train_policy(algorithm, hp, cfg: LoopKnobs, seed: int, policy, ref, source, monitor=None, tracker=None,
                 progress_desc="policy", checkpointer=None):
    """Run the loop; returns the per-step history (list of dicts) for metrics and plots.

    `monitor(policy, ref) -> SampleBatch` draws fresh samples for sources that do not (offline ones),
    every `cfg.monitor_every` iterations, so every method logs the proxy reward and KL of its policy.
    With a `checkpointer`, the loop resumes from its checkpoint and checkpoints after optimizer steps:
    the `LoopPosition`, the weights, optimizer, scheduler, algorithm state, sample source and every
    random stream.
    """
    minibatches = -(-cfg.batch_size // cfg.minibatch_size)
    total_steps = cfg.iterations * cfg.steps_per_batch * minibatches
    state = {}
    if algorithm.value_head:
        state["value_head"] = distributed.place(ValueHead(policy.config.hidden_size))
    parameters = [p for p in policy.parameters() if p.requires_grad]  # LoRA: the adapter only
    parameters += list(state["value_head"].parameters()) if algorithm.value_head else []
    micro = micro_batching(cfg.minibatch_size, cfg.micro_batch_size, distributed.world_size())
    modules = {k: v for k, v in state.items() if isinstance(v, torch.nn.Module)}
    model = torch.nn.ModuleDict({"policy": policy, **modules}) if modules else policy  # what DeepSpeed wraps
    updater = optimization.Updater(model, parameters, cfg, total_steps, micro.accumulation, micro.size,
                                   deepspeed=cfg.deepspeed)
    shuffle = torch.Generator().manual_seed(seed)
    nonfinite = NonFiniteSteps(cfg.skip_nonfinite_steps or 0, "policy.skip_nonfinite_steps", checkpointer)
    at = LoopPosition()
    if checkpointer is not None:
        updater.engine_dir = checkpoint.engine_dir(checkpointer.stage)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        at = _restore(saved, policy, state, updater, shuffle, source)
    nonfinite.count = at.skipped
    history, start = at.history, time.time() - at.elapsed

    def snapshot():
        at.elapsed, at.skipped = time.time() - start, nonfinite.count
        return _snapshot(at, policy, state, updater, shuffle, source)

    bar = tqdm(total=cfg.iterations, initial=at.iteration, desc=progress_desc, disable=None)
    while at.iteration < cfg.iterations:
        if at.batch is None:
            at.batch, at.extra, at.collect_seconds = _collect(algorithm, hp, cfg, policy, ref, source, monitor, state, at)
        batch = at.batch
        policy.train()
        while at.pass_ < cfg.steps_per_batch:
            if at.order is None:
                at.order = torch.randperm(len(batch), generator=shuffle)
            while at.minibatch * cfg.minibatch_size < len(batch):
                first = at.minibatch * cfg.minibatch_size
                rows = at.order[first : first + cfg.minibatch_size]  # the whole minibatch; the step splits it
                if algorithm.begin_step is not None:  # once per optimizer step, on the whole minibatch
                    algorithm.begin_step(batch.select(rows), hp, state)
                loss, stats, grad_norm = training_step(
                    updater, rows, lambda part: algorithm.objective(policy, batch.select(part), hp, state), micro.size,
                    nonfinite, at.step, f"iteration {at.iteration}",
                    units=lambda part: algorithm.units(batch.select(part), hp))
                elapsed = time.time() - start
                row = {"step": at.step, "iteration": at.iteration, "loss": loss, "grad_norm": grad_norm,
                       "lr": updater.lr, "samples": at.samples,
                       "samples_per_second": at.samples / elapsed, "tokens_per_second": at.tokens / elapsed,
                       "collect_seconds": at.collect_seconds, **at.extra, **stats}
                if nonfinite.allowed:
                    row["skipped_steps"] = nonfinite.count
                if updater.engine is not None:  # what DeepSpeed really ran (read from its engine)
                    row |= {"zero_stage": updater.engine.zero_optimization_stage(),
                            "accumulation_steps": updater.engine.gradient_accumulation_steps()}
                history.append(row)
                if tracker is not None:
                    tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=at.step)
                at.step, at.minibatch = at.step + 1, at.minibatch + 1
                if checkpointer is not None:
                    checkpointer.step_done(at.step, snapshot)
            at.pass_, at.order, at.minibatch = at.pass_ + 1, None, 0
        at.iteration, at.pass_, at.batch = at.iteration + 1, 0, None
        bar.update(1)
    bar.close()
    return history


def _collect(algorithm, hp, cfg, policy, ref, source, monitor, state, at: LoopPosition):
    """One collection: the batch, the per-iteration stats that go with it, and its wall time."""
    collect_start = time.time()
    policy.eval()
    batch = source.collect(cfg.batch_size, policy, ref)
    collect_seconds = time.time() - collect_start
    extra = {}
    fresh = batch if isinstance(batch, SampleBatch) else getattr(batch, "samples", None)
    if fresh is not None:
        at.samples += len(fresh.seqs)
        at.tokens += int(target_mask(fresh.seqs).sum())
    if isinstance(batch, SampleBatch):
        extra = fresh_sample_stats(batch)
    elif monitor is not None and (at.iteration % cfg.monitor_every == 0 or at.iteration == cfg.iterations - 1):
        extra = fresh_sample_stats(monitor(policy, ref))
        collect_seconds = time.time() - collect_start
    if algorithm.prepare is not None:  # once per collected batch, e.g. PPO's values and GAE
        with torch.no_grad():
            batch, prepared = algorithm.prepare(policy, batch, hp, state)
        extra |= prepared
    return batch, extra, collect_seconds


def _snapshot(at: LoopPosition, policy, state, updater, shuffle, source) -> dict:
    weights = train_state.trainable_state(policy) if updater.engine is None else {}  # DeepSpeed: in its checkpoint
    return {"step": at.step, "position": train_state.to_tree(at), "policy": weights,
            "algorithm_state": {k: v.state_dict() if isinstance(v, torch.nn.Module) else v for k, v in state.items()
                                if updater.engine is None or not isinstance(v, torch.nn.Module)},
            "updater": updater.state_dict(), "rng": train_state.rng_state(shuffle), "source": source.state_dict()}


def _restore(saved, policy, state, updater, shuffle, source) -> LoopPosition:
    at = train_state.from_tree(saved["position"], BATCH_TYPES | {"LoopPosition": LoopPosition})
    if saved["policy"]:
        train_state.load_trainable_state(policy, saved["policy"])
    for k, v in saved["algorithm_state"].items():
        if isinstance(state.get(k), torch.nn.Module):
            state[k].load_state_dict(v)
        else:
            state[k] = v
    updater.load_state_dict(saved["updater"])
    train_state.set_rng_state(saved["rng"], shuffle)
    source.load_state_dict(saved["source"])
    return at
