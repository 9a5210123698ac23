"""Proxy reward model: the SFT backbone with a fresh scalar head, trained with the Bradley-Terry loss.

transformers' GPT2ForSequenceClassification reads the score at the last non-pad token, i.e. at the
response's EOS (PAD differs from EOS in our tokenizer for this reason).
"""

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from pftlab.core.distributed import place
from pftlab.lm.model import Sequences, batched, pack_pairs


def new_reward_model(sft_dir):
    return place(AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1))


def load_reward_model(path):
    return place(AutoModelForSequenceClassification.from_pretrained(path))


def score(rm, seqs: Sequences) -> torch.Tensor:
    seqs = seqs.to(rm)
    return rm(input_ids=seqs.input_ids, attention_mask=seqs.attention_mask).logits.squeeze(-1).float()  # bf16 RM: fp32 rewards


@torch.no_grad()
def score_sequences(rm, seqs: Sequences, batch_size=64) -> torch.Tensor:
    was_training = rm.training
    rm.eval()
    out = batched(lambda s: score(rm, s), seqs, batch_size)
    rm.train(was_training)
    return out


def evaluate_reward_model(rm, pairs, pad_id) -> dict:
    chosen, rejected = pack_pairs(pairs, pad_id)
    s_w, s_l = score_sequences(rm, chosen), score_sequences(rm, rejected)
    out = {"label_accuracy": float((s_w > s_l).float().mean()), "pairs": len(pairs)}
    if not pairs or "chosen_gold" not in pairs[0]:
        return out  # human-labelled pairs: no gold reward to compare with
    s_w, s_l = s_w.cpu(), s_l.cpu()
    scores = torch.cat([s_w, s_l]).numpy()
    gold = np.array([p["chosen_gold"] for p in pairs] + [p["rejected_gold"] for p in pairs])
    corr = float(np.corrcoef(scores, gold)[0, 1]) if scores.std() > 0 and gold.std() > 0 else 0.0
    # Accuracy against the gold ordering (ties in gold excluded) and against the sampled labels.
    g_w, g_l = gold[: len(pairs)], gold[len(pairs) :]
    strict = g_w != g_l
    gold_acc = float(((s_w.numpy() > s_l.numpy()) == (g_w > g_l))[strict].mean()) if strict.any() else float("nan")
    return out | {"gold_order_accuracy": gold_acc, "gold_correlation": corr}
