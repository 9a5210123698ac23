"""Which process this is and what processes agree on, under any launcher (`deepspeed`, `torchrun`,
`accelerate launch`: they set RANK and WORLD_SIZE). In a single process every function is the identity,
so one-process numbers never pass through a reduction."""
import os

import torch


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", 1))


def device() -> torch.device:
    """This process's device, decided once for every model and batch: `cuda:<LOCAL_RANK>` where CUDA is
    available (the launchers set LOCAL_RANK; 0 alone), else the CPU. PFTLAB_DEVICE=cpu keeps a GPU machine on
    the CPU."""
    if os.environ.get("PFTLAB_DEVICE", "") != "cpu" and torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def place(model):
    """The one place a model goes to this process's device (policy, reference, reward model, judge, value
    head); DeepSpeed, where used, then wraps it there."""
    return model.to(device())


def shard(items: list, rank: int, world: int) -> list:
    """Process `rank`'s contiguous share of `items` (sizes differ by at most one): the shards in rank order
    are `items` again, so a prompt-major batch gathered from them keeps its order."""
    size, extra = divmod(len(items), world)
    start = rank * size + min(rank, extra)
    return items[start : start + size + (rank < extra)]


def all_gather(obj) -> list:
    """Every process's `obj` (picklable; tensors on the CPU), in rank order, on every process; `[obj]` alone."""
    if world_size() == 1:
        return [obj]
    gathered = [None] * world_size()
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


def is_main_process() -> bool:
    """Only rank 0 writes outputs, metrics and checkpoints."""
    return rank() == 0


def all_finite(loss: torch.Tensor) -> bool:
    """Whether the loss is finite on every process: all of them back-propagate a micro-batch or none does
    (a process skipping alone would leave the others waiting in the gradient all-reduce)."""
    finite = torch.isfinite(loss).all().float()  # on the loss's device: NCCL reduces CUDA tensors only
    if world_size() > 1:
        torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
    return bool(finite.item())
