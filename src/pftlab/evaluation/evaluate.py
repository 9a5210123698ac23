"""Held-out evaluation of a policy: gold and proxy reward, reverse KL to the SFT reference, win rate
against SFT samples judged by the gold reward, and response length. With human-labelled data there is
no gold reward (gold.json says "reward_model"): the reward model is the judge."""
import math

import numpy as np
import torch

from pftlab.algorithms.losses import kl_estimates
from pftlab.core.stats import t_half_width
from pftlab.lm.gold import ends_with_eos, gold_reward, response_length
from pftlab.lm.model import batched, pack, pack_pairs, target_mask, token_logprobs
from pftlab.lm.reward_model import score_sequences
from pftlab.lm.sampling import sample_responses


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
    seqs = pack(repeated, responses, tokenizer.pad_token_id).to(policy)
    lengths = np.array([response_length(r, eos) for r in responses])
    proxy = score_sequences(rm, seqs).cpu().numpy()
    gold = proxy if gold_spec["reward"] == "reward_model" else gold_reward(gold_spec, lengths)
    with torch.no_grad():
        token_logp = batched(lambda s: token_logprobs(policy, s), seqs)
        token_ref = batched(lambda s: token_logprobs(ref, s), seqs)
    k1, k3 = (x.cpu() for x in kl_estimates(token_logp, token_ref, target_mask(seqs)))
    # The interval is over held-out prompts (the samples of one prompt are not independent): the sampling
    # noise of this one trained policy, not the spread between training runs.
    per_prompt = gold.reshape(-1, n).mean(1)
    metrics = {
        "gold_reward": float(per_prompt.mean()),
        "gold_reward_ci95": t_half_width(float(per_prompt.std(ddof=1)) if len(per_prompt) > 1 else math.nan, len(per_prompt)),
        "proxy_reward": float(proxy.mean()),
        "kl_k1": float(k1.mean()),
        "kl_k3": float(k3.mean()),
        "win_rate_vs_sft": win_rate(gold, reference_gold),
        "response_length": float(lengths.mean()),
        "eos_fraction": float(np.mean([ends_with_eos(r, eos) for r in responses])),
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
    for side, seqs in zip(("chosen", "rejected"), pack_pairs(pairs, pad_id)):
        with torch.no_grad():
            change = batched(lambda s: token_logprobs(policy, s).sum(-1) - token_logprobs(ref, s).sum(-1), seqs.to(policy))
        change = change.cpu().numpy()
        out[f"logp_{side}_change"] = float(change.mean())
        out[f"logp_{side}_change_sd"] = float(change.std(ddof=1)) if len(change) > 1 else float("nan")
    return out
