"""One optimizer step, shared by SFT, the reward model and every policy algorithm, and the one rule for how a
minibatch is weighted when it is split over processes and micro-batches.

The rule: an objective's loss is a mean over its unit (rows, response tokens, pairs kept), so the step counts
that unit over the whole minibatch before any backward pass (`units(rows) -> int`; every process holds the
whole minibatch) and back-propagates each micro-batch's mean loss weighted by its share of that count. Each
process takes `rows[rank::world]`; shares may differ by a row, and the weight includes `world` because
DeepSpeed averages the processes' gradients. The gradient is then the whole minibatch's, however it is split.
Every process runs the same number of micro-batches (a process whose share runs out repeats a row with weight
0), so the collectives of DeepSpeed and ZeRO-3's forward passes stay in step.

Every logged number follows the same rule: the loss is weighted by its unit, each stat by the count it
averages over (`losses.Mean`; a plain float counts the micro-batch's rows). A stat that a micro-batch or a
process cannot produce (no pair kept) has count 0 there and is left out of the mean; if no one produced it,
it is absent from the step's row. The stats travel between processes as (sum, count) per key, so a process
that lacks a key never breaks the collective. One unsplit minibatch logs its values untouched.
"""
import math
from dataclasses import dataclass

from pftlab.core import distributed
from pftlab.core.errors import PftlabError


@dataclass(frozen=True)
class MicroBatching:
    """How one minibatch is split: `size` rows per micro-batch, `accumulation` micro-batches per process."""
    size: int
    accumulation: int


def micro_batching(batch_size: int, micro_batch_size=None, world: int = 1) -> MicroBatching:
    """Micro-batches of `micro_batch_size` rows (default: no split) of a process's share of a `batch_size`
    minibatch (at most ceil(batch_size / world) rows). Any split is exact under `accumulate`'s rule."""
    per_process = -(-batch_size // world)
    micro = min(micro_batch_size or per_process, per_process)
    return MicroBatching(micro, -(-per_process // micro))


def split(rows, size: int) -> list:
    """Consecutive micro-batches of `size` rows (a list or a 1-D index tensor)."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def process_parts(rows, micro_size: int, rank: int, world: int) -> list:
    """This process's micro-batches of the minibatch `rows`: (part, counts) pairs. Every process gets the same
    number of them, the most any process needs; the missing ones repeat the minibatch's first row and count
    for nothing (counts False)."""
    mine = rows[rank::world]
    parts = [(part, True) for part in split(mine, micro_size)]
    needed = math.ceil(math.ceil(len(rows) / world) / micro_size)
    return parts + [(rows[:1], False)] * (needed - len(parts))


class WeightedMeans:
    """Per key, the (sum, count) of a mean over micro-batches and processes."""

    def __init__(self):
        self.parts = {}  # key -> list of (value, count)

    def add(self, key: str, value: float, count: int):
        if count > 0:
            self.parts.setdefault(key, []).append((float(value), count))
        else:
            self.parts.setdefault(key, [])

    def over_processes(self) -> dict:
        """key -> the mean over every process's parts (keys in first-seen order; absent where no part counted)."""
        merged = {}
        for parts in distributed.all_gather(self.parts):
            for key, values in parts.items():
                merged.setdefault(key, []).extend(values)
        return {key: _mean(values) for key, values in merged.items() if values}


def _mean(values: list) -> float:
    if len(values) == 1:  # one part: the value as it was computed (no round trip through sum / count)
        return values[0][0]
    weighted = [v * c for v, c in values]
    total = math.fsum(weighted) if all(map(math.isfinite, weighted)) else sum(weighted)  # fsum raises on inf - inf
    return total / sum(c for _, c in values)


class NonFiniteSteps:
    """Counts non-finite steps; past `allowed` of them, stops the stage naming the step and the last checkpoint."""

    def __init__(self, allowed: int, key: str, checkpointer=None):
        self.allowed, self.key, self.checkpointer, self.count = allowed, key, checkpointer, 0

    def record(self, loss_finite: bool, step: int, where: str):
        self.count += 1
        if self.count > self.allowed:
            last = self.checkpointer.describe_last() if self.checkpointer is not None else "no checkpointing"
            raise PftlabError(f"non-finite {'loss' if not loss_finite else 'gradient'} at step {step} ({where}); "
                              f"{self.count} non-finite step(s), {self.key} allows {self.allowed}; "
                              f"lower the learning rate; {last}")


def accumulate(updater, rows, loss_fn, micro_size: int, units=len):
    """Zero the gradients and back-propagate this process's micro-batches of the minibatch `rows` (all of it,
    as every process holds it), each weighted by its share of `units(rows)`. Returns the loss and stats that
    one process holding the whole minibatch would log. A non-finite micro-batch (on any process) ends the step
    there: nothing after it is back-propagated, so a later one cannot close the step on a partial gradient, and
    the loss is NaN (the step is then skipped or stops the stage)."""
    updater.zero_grad()
    rank, world = distributed.rank(), distributed.world_size()
    total = units(rows)
    means, finite = WeightedMeans(), True
    parts = process_parts(rows, micro_size, rank, world)
    for i, (part, counts) in enumerate(parts):
        part_loss, part_stats = loss_fn(part)
        count = units(part) if counts else 0
        if not distributed.all_finite(part_loss):  # agreed: every process stops here, or none does
            finite = False
            break
        updater.backward(part_loss, world * count / total if total else 0.0, last=i == len(parts) - 1)
        means.add("loss", part_loss.item(), count)
        for key, value in part_stats.items():
            means.add(key, value, (getattr(value, "count", len(part))) if counts else 0)
    stats = means.over_processes()
    loss = stats.pop("loss", 0.0)
    return (loss if finite else float("nan")), stats


def training_step(updater, rows, loss_fn, micro_size: int, nonfinite: NonFiniteSteps, step: int, where: str,
                  units=len):
    """Accumulate, then update. A non-finite loss or gradient skips the update (the schedule moves on) and
    is counted by `nonfinite`, which stops the stage past its allowance. Returns (loss, stats, grad_norm)."""
    loss, stats = accumulate(updater, rows, loss_fn, micro_size, units)
    finite = math.isfinite(loss)
    grad_norm = updater.step() if finite else float("nan")
    if not math.isfinite(grad_norm):
        nonfinite.record(finite, step, where)
        if not finite:
            updater.skip()
    return loss, stats, grad_norm
