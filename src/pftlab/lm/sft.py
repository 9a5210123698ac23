"""SFT's held-out loss: mean negative log-likelihood per reply token (training is training/supervised.train_sft)."""
import torch

from pftlab.lm.model import pack, target_mask, token_logprobs


@torch.no_grad()
def eval_loss(model, examples, pad_id, batch_size=64):
    model.eval()
    total, count = 0.0, 0.0
    for i in range(0, len(examples), batch_size):
        chunk = examples[i : i + batch_size]
        seqs = pack([e[0] for e in chunk], [e[1] for e in chunk], pad_id).to(model)
        mask = target_mask(seqs)
        total += -(token_logprobs(model, seqs) * mask).sum().item()
        count += mask.sum().item()
    model.train()
    return total / max(count, 1)
