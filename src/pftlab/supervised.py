"""The minibatch loop that SFT and the reward model share: a seeded shuffle per epoch, AdamW with warmup
and cosine decay, gradient clipping (optimization.Updater: plain or DeepSpeed, micro-batches), a stop on a
non-finite loss or gradient, checkpoint and resume."""
import math

import torch
from tqdm.auto import tqdm

from . import checkpoint, optimization
from .errors import PftlabError


def train_supervised(model, examples: list, cfg: dict, seed: int, batch_loss, *, weight_decay: float, warmup_steps: int,
                     evaluate=None, eval_every: int = 25, tracker=None, checkpointer=None, desc="train"):
    """`batch_loss(list of examples) -> (loss, stats dict)`; `evaluate() -> dict` every `eval_every` steps and
    at the last. Returns the per-step history."""
    steps_per_epoch = math.ceil(len(examples) / cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    rank, world = optimization.rank(), optimization.world_size()
    per_process = math.ceil(cfg["batch_size"] / world)
    micro = min(cfg.get("micro_batch_size") or per_process, per_process)
    accumulation = math.ceil(per_process / micro)
    knobs = {"lr": cfg["lr"], "warmup_steps": warmup_steps, "lr_schedule": "cosine", "max_grad_norm": 1.0,
             "deepspeed": cfg.get("deepspeed")}
    updater = optimization.Updater(model, list(model.parameters()), knobs, total, accumulation, micro, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    run = {"epoch": 0, "order": None, "position": 0, "step": 0, "history": []}
    if checkpointer is not None:
        updater.engine_dir = checkpoint.engine_dir(checkpointer.stage)
    saved = checkpointer.load() if checkpointer is not None else None
    if saved is not None:
        run.update(saved["run"])
        if saved["model"]:  # DeepSpeed: the weights are in its own checkpoint
            checkpoint.load_trainable_state(model, saved["model"])
        updater.load_state_dict(saved["updater"])
        checkpoint.set_rng_state(saved["rng"], generator)

    def snapshot():
        weights = checkpoint.trainable_state(model) if updater.engine is None else {}
        return {"step": run["step"], "run": run, "model": weights,
                "updater": updater.state_dict(), "rng": checkpoint.rng_state(generator)}

    model.train()
    bar = tqdm(total=total, initial=run["step"], desc=desc, disable=None)
    while run["epoch"] < cfg["epochs"]:
        if run["order"] is None:
            run["order"], run["position"] = torch.randperm(len(examples), generator=generator).tolist(), 0
        while run["position"] < len(examples):
            step = run["step"]
            chunk = [examples[j] for j in run["order"][run["position"] : run["position"] + cfg["batch_size"]]]
            updater.zero_grad()
            losses, parts_stats = [], []
            mine = chunk[rank::world]  # this process's share of the batch (all of it on one device)
            for i in range(0, len(mine), micro):
                part = mine[i : i + micro]
                part_loss, part_stats = batch_loss(part)
                if optimization.all_finite(part_loss):
                    updater.backward(part_loss, len(part) / len(mine), last=i + micro >= len(mine))
                losses.append(part_loss.item())
                parts_stats.append(part_stats)
            loss, stats = sum(losses) / len(losses), parts_stats[0]
            if len(parts_stats) > 1:
                stats = {k: sum(s[k] for s in parts_stats) / len(parts_stats) for k in stats}
            loss, *means = optimization.mean_over_processes([loss, *stats.values()], len(mine))
            stats = dict(zip(stats, means))
            grad_norm = updater.step() if math.isfinite(loss) else float("nan")
            if not math.isfinite(grad_norm):
                where = checkpointer.describe_last() if checkpointer is not None else "no checkpointing"
                raise PftlabError(f"{desc}: non-finite {'loss' if not math.isfinite(loss) else 'gradient'} at step "
                                  f"{step} (epoch {run['epoch']}); lower the learning rate; {where}")
            row = {"step": step, "epoch": run["epoch"], "train_loss": loss, **stats}
            if evaluate is not None and (step % eval_every == 0 or step == total - 1):
                row |= evaluate()
                model.train()
            run["history"].append(row)
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            run["step"], run["position"] = step + 1, run["position"] + cfg["batch_size"]
            bar.update(1)
            if checkpointer is not None:
                checkpointer.step_done(run["step"], snapshot)
        run["epoch"], run["order"] = run["epoch"] + 1, None
    bar.close()
    return run["history"]
