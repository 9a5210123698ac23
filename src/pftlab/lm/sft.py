"""Supervised fine-tuning: next-token loss on reply tokens only."""
import torch

from pftlab.algorithms.losses import sft_loss
from pftlab.lm.model import pack, target_mask, token_logprobs
from pftlab.training.supervised import train_supervised


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


def train_sft(model, train, held_out, cfg, pad_id, seed, tracker=None, eval_every=25, checkpointer=None):
    """`train`/`held_out`: lists of (prompt_ids, response_ids). Returns per-step history."""

    def batch_loss(chunk):
        seqs = pack([c[0] for c in chunk], [c[1] for c in chunk], pad_id)
        loss, _ = sft_loss(token_logprobs(model, seqs), target_mask(seqs))
        return loss, {}

    return train_supervised(model, train, cfg, seed, batch_loss, section="sft",
                            evaluate=lambda: {"eval_loss": eval_loss(model, held_out, pad_id)}, eval_every=eval_every,
                            tracker=tracker, checkpointer=checkpointer, desc="sft")
