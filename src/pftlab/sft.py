"""Supervised fine-tuning: next-token loss on reply tokens only."""
import math

import torch
from tqdm.auto import tqdm
from transformers import get_scheduler

from .losses import sft_loss
from .model import pack, target_mask, token_logprobs


@torch.no_grad()
def eval_loss(model, examples, pad_id, batch_size=64):
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        seqs = pack([e[0] for e in chunk], [e[1] for e in chunk], pad_id)
        mask = target_mask(seqs)
        total += -(token_logprobs(model, seqs) * mask).sum().item()
        count += mask.sum().item()
    model.train()
    return total / max(count, 1)


def train_sft(model, train, held_out, cfg, pad_id, seed, tracker=None, eval_every=25):
    """`train`/`held_out`: lists of (prompt_ids, response_ids). Returns per-step history."""
    steps_per_epoch = math.ceil(len(train) / cfg["batch_size"])
    total = steps_per_epoch * cfg["epochs"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=0.01)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=cfg["warmup_steps"], num_training_steps=total)
    generator = torch.Generator().manual_seed(seed)
    history, step = [], 0
    model.train()
    bar = tqdm(total=total, desc="sft", disable=None)
    for epoch in range(cfg["epochs"]):
        order = torch.randperm(len(train), generator=generator).tolist()
        for i in range(0, len(order), cfg["batch_size"]):
            chunk = [train[j] for j in order[i : i + cfg["batch_size"]]]
            seqs = pack([c[0] for c in chunk], [c[1] for c in chunk], pad_id)
            loss, _ = sft_loss(token_logprobs(model, seqs), target_mask(seqs))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            row = {"step": step, "epoch": epoch, "train_loss": loss.item()}
            if step % eval_every == 0 or step == total - 1:
                row["eval_loss"] = eval_loss(model, held_out, pad_id)
            history.append(row)
            if tracker is not None:
                tracker.log_metrics({k: v for k, v in row.items() if k != "step"}, step=step)
            step += 1
            bar.update(1)
    bar.close()
    return history
