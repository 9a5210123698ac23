"""Held-out evaluation of a policy: gold and proxy reward, reverse KL to the SFT reference, win rate
against SFT samples judged by the gold reward, and response length. With human-labelled data there is
no gold reward (gold.json says "reward_model"): the reward model is the judge."""
import math

import numpy as np
import torch

from .gold import gold_reward, response_length
from .losses import kl_estimates
from .model import batched, pack, target_mask, token_logprobs
from .reward_model import score_sequences
from .sampling import sample_responses


def mean_ci95(per_prompt: np.ndarray):
    """Mean and normal-approximation 95% half-width over prompts (samples of one prompt are not independent)."""
    n = len(per_prompt)
    half = 1.96 * per_prompt.std(ddof=1) / math.sqrt(n) if n > 1 else float("nan")
    return float(per_prompt.mean()), float(half)


def win_rate(policy_gold: np.ndarray, reference_gold: np.ndarray) -> float:
    """Share of paired comparisons the policy wins; ties count half."""
    return float(np.mean((policy_gold > reference_gold) + 0.5 * (policy_gold == reference_gold)))


def sample_eval(policy, prompts, n, cfg, tokenizer):
    repeated = [p for p in prompts for _ in range(n)]
    responses = sample_responses(policy, repeated, cfg["max_new_tokens"], cfg["temperature"], cfg["batch_size"],
                                 tokenizer.eos_token_id, tokenizer.pad_token_id, desc="eval samples")
    return repeated, responses


def evaluate_samples(policy, ref, rm, repeated, responses, n, gold_spec, reference_gold, tokenizer):
    """Metrics of `responses` (n per prompt, prompt-major) and the per-sample rows to save."""
    eos = tokenizer.eos_token_id
    seqs = pack(repeated, responses, tokenizer.pad_token_id)
    lengths = np.array([response_length(r, eos) for r in responses])
    proxy = score_sequences(rm, seqs).numpy()
    gold = proxy if gold_spec["reward"] == "reward_model" else gold_reward(gold_spec, lengths)
    with torch.no_grad():
        token_logp = batched(lambda s: token_logprobs(policy, s), seqs)
        token_ref = batched(lambda s: token_logprobs(ref, s), seqs)
    k1, k3 = kl_estimates(token_logp, token_ref, target_mask(seqs))
    gold_mean, gold_ci = mean_ci95(gold.reshape(-1, n).mean(1))
    metrics = {
        "gold_reward": gold_mean,
        "gold_reward_ci95": gold_ci,
        "proxy_reward": float(proxy.mean()),
        "kl_k1": float(k1.mean()),
        "kl_k3": float(k3.mean()),
        "win_rate_vs_sft": win_rate(gold, reference_gold),
        "response_length": float(lengths.mean()),
        "eos_fraction": float(np.mean([bool(r) and r[-1] == eos for r in responses])),
        "samples": len(responses),
    }
    rows = [{"prompt_index": i // n, "sample_index": i % n, "response_ids": r, "length": int(l), "gold": float(g),
             "proxy": float(p), "kl_k1": float(a), "text": tokenizer.decode(r, skip_special_tokens=True)}
            for i, (r, l, g, p, a) in enumerate(zip(responses, lengths, gold, proxy, k1.tolist()))]
    return metrics, rows


def pair_likelihood_change(policy, ref, pairs: list, pad_id: int) -> dict:
    """How training moved log pi(y_w|x) and log pi(y_l|x) of preference pairs (Tajwar et al.: under DPO
    both can fall): mean and standard deviation over pairs of log pi - log pi_ref, for each side."""
    out = {"likelihood_pairs": len(pairs)}
    for side in ("chosen", "rejected"):
        seqs = pack([r["prompt_ids"] for r in pairs], [r[f"{side}_ids"] for r in pairs], pad_id)
        with torch.no_grad():
            change = batched(lambda s: token_logprobs(policy, s).sum(-1) - token_logprobs(ref, s).sum(-1), seqs).numpy()
        out[f"logp_{side}_change"] = float(change.mean())
        out[f"logp_{side}_change_sd"] = float(change.std(ddof=1)) if len(change) > 1 else float("nan")
    return out
