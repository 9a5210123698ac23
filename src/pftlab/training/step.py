"""One optimizer step, shared by SFT, the reward model and every policy algorithm.

A step takes this process's rows of a minibatch and a `loss_fn(rows) -> (loss, stats)`; it splits the rows
into micro-batches, back-propagates each micro-batch's mean loss weighted by its share of the rows (so the
gradient is that of the whole minibatch's mean, however it is split), agrees with the other processes on
whether the loss is finite, averages the logged loss and stats over micro-batches and processes, and then
updates, skips (counted, up to `max_nonfinite`) or stops on a non-finite loss or gradient.
"""
import math
from dataclasses import dataclass

from pftlab.core import distributed
from pftlab.core.errors import ParamError, PftlabError


@dataclass(frozen=True)
class MicroBatching:
    """How one minibatch is split: `size` rows per micro-batch on each process, `accumulation` of them."""
    size: int
    accumulation: int


def micro_batching(section: str, batch_size: int, micro_batch_size=None, world: int = 1) -> MicroBatching:
    """The one rule for every loop: each of `world` processes gets batch_size / world rows (the batch must
    divide evenly, or process shares would weigh unequally), split into micro-batches of `micro_batch_size`
    rows (default: no split); a shorter last micro-batch is exact, since each is weighted by its rows."""
    if batch_size % world:
        raise ParamError(f"params.yaml: '{section}' ({batch_size}) must be a multiple of the {world} processes")
    per_process = batch_size // world
    micro = min(micro_batch_size or per_process, per_process)
    return MicroBatching(micro, math.ceil(per_process / micro))


def split(rows, size: int) -> list:
    """Consecutive micro-batches of `size` rows (a list or a 1-D index tensor)."""
    return [rows[i : i + size] for i in range(0, len(rows), size)]


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


def accumulate(updater, rows, loss_fn, micro_size: int):
    """Zero the gradients and back-propagate `rows` in micro-batches. Returns the loss and stats averaged
    over micro-batches and processes (what one process holding the whole minibatch would log)."""
    updater.zero_grad()
    losses, parts_stats = [], []
    parts = split(rows, micro_size)
    for i, part in enumerate(parts):
        part_loss, part_stats = loss_fn(part)
        if distributed.all_finite(part_loss):
            updater.backward(part_loss, len(part) / len(rows), last=i == len(parts) - 1)
        losses.append(part_loss.item())
        parts_stats.append(part_stats)
    loss, stats = sum(losses) / len(losses), parts_stats[0]
    if len(parts_stats) > 1:  # the minibatch's stats: the mean over its micro-batches
        stats = {k: sum(s[k] for s in parts_stats) / len(parts_stats) for k in stats}
    loss, *means = distributed.mean_over_processes([loss, *stats.values()], len(rows))
    return loss, dict(zip(stats, means))


def training_step(updater, rows, loss_fn, micro_size: int, nonfinite: NonFiniteSteps, step: int, where: str):
    """Accumulate, then update. A non-finite loss or gradient skips the update (the schedule moves on) and
    is counted by `nonfinite`, which stops the stage past its allowance. Returns (loss, stats, grad_norm)."""
    loss, stats = accumulate(updater, rows, loss_fn, micro_size)
    finite = math.isfinite(loss)
    grad_norm = updater.step() if finite else float("nan")
    if not math.isfinite(grad_norm):
        nonfinite.record(finite, step, where)
        if not finite:
            updater.skip()
    return loss, stats, grad_norm
