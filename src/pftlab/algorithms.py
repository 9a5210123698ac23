"""The algorithm table: for each method, where its samples come from, whether its loss has a negative
gradient (pushes some sampled response down), whether it needs a reward model, and its objective.

An objective turns one minibatch (trainer.PairBatch, SampleBatch or HybridBatch) into (loss, stats)
with the loss functions of losses.py; `state` carries what persists across steps (REINFORCE's baseline).
The trainer is the same for every row.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from . import losses
from .model import batched, target_mask, token_logprobs, token_logprobs_and_values
from .params import _nonneg, _pos_int, _positive


@dataclass(frozen=True)
class Algorithm:
    name: str
    family: str  # "max-likelihood" | "RL" | "contrastive"
    source: str  # "offline" (the preference pairs) | "on_policy" (fresh samples) | "hybrid" (both)
    negative_gradient: bool
    needs_reward_model: bool
    objective: Callable
    description: str
    prepare: Callable = None  # once per collected batch, without gradient (PPO: values, GAE advantages)
    value_head: bool = False  # trains a critic on the policy's hidden states (PPO)


def _pair_logps(policy, batch):
    return token_logprobs(policy, batch.chosen).sum(-1), token_logprobs(policy, batch.rejected).sum(-1)


def _sample_logps(policy, batch):
    token_logp, entropy = token_logprobs(policy, batch.seqs, with_entropy=True)
    return token_logp.sum(-1), {"entropy": (entropy.sum() / target_mask(batch.seqs).sum().clamp(min=1)).item()}


# --- offline, maximum likelihood -------------------------------------------------------------------
def pref_ft_objective(policy, batch, hp, state):
    logp_w = token_logprobs(policy, batch.chosen).sum(-1)
    return losses.weighted_nll(logp_w, torch.ones_like(logp_w))


def offline_bon_objective(policy, batch, hp, state):
    logp = torch.stack(_pair_logps(policy, batch), -1)
    rewards = torch.stack([batch.reward_chosen, batch.reward_rejected], -1)
    return losses.weighted_nll(logp, losses.best_of_n_weights(rewards, 1))


def offline_rwr_objective(policy, batch, hp, state):
    logp = torch.stack(_pair_logps(policy, batch), -1)
    rewards = torch.stack([batch.reward_chosen, batch.reward_rejected], -1)
    return losses.weighted_nll(logp, losses.rwr_weights(rewards, hp["temperature"], hp["max_weight"]))


# --- on-policy, maximum likelihood -----------------------------------------------------------------
def bon_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    weights = losses.best_of_n_weights(batch.rewards.view(-1, batch.k), hp["top"]).view(-1)
    loss, more = losses.weighted_nll(logp, weights)
    return loss, stats | more


def rwr_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    loss, more = losses.weighted_nll(logp, losses.rwr_weights(batch.rewards, hp["temperature"], hp["max_weight"]))
    return loss, stats | more


# --- on-policy, RL ---------------------------------------------------------------------------------
def _shaped_rewards(batch, hp):
    """r - kl_coef * KL(pi || pi_ref) of each sample, with the chosen estimator (k1 or k3) summed over tokens."""
    penalty = losses.sequence_kl_penalty(batch.old_token_logp, batch.ref_token_logp, target_mask(batch.seqs),
                                         hp.get("kl_estimator", "k1"))
    return batch.rewards - hp["kl_coef"] * penalty


def reinforce_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    shaped = _shaped_rewards(batch, hp)
    baseline = state.get("baseline", shaped.mean().item())
    loss, more = losses.policy_gradient_loss(logp, shaped - baseline)
    state["baseline"] = hp["baseline_decay"] * baseline + (1 - hp["baseline_decay"]) * shaped.mean().item()
    return loss, stats | more | {"baseline": baseline}


def rloo_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    shaped = _shaped_rewards(batch, hp)
    advantages = losses.leave_one_out_advantages(shaped.view(-1, batch.k)).view(-1)
    loss, more = losses.policy_gradient_loss(logp, advantages)
    return loss, stats | more


def ppo_prepare(policy, batch, hp, state):
    """At collection: the critic's values, per-token KL-penalised rewards, GAE advantages (whitened) and
    returns; then the adaptive KL controller moves the coefficient toward the target KL."""
    kl_coef = state.setdefault("kl_coef", hp["kl_coef"])
    mask = target_mask(batch.seqs)
    values = batched(lambda s: token_logprobs_and_values(policy, state["value_head"], s)[2], batch.seqs)
    token_rewards = losses.kl_penalised_token_rewards(batch.rewards, batch.old_token_logp, batch.ref_token_logp,
                                                      mask, kl_coef)
    advantages, returns = losses.gae_advantages(token_rewards, values, mask, hp["gamma"], hp["gae_lambda"])
    batch.extra = {"values": values, "advantages": losses.masked_whiten(advantages, mask), "returns": returns}
    observed_kl = (batch.old_logp - batch.ref_logp).mean().item()
    if hp["adaptive_kl"]:
        state["kl_coef"] = losses.adaptive_kl_coef(kl_coef, observed_kl, hp["kl_target"], hp["kl_horizon"], len(batch.seqs))
    return batch, {"kl_coef": kl_coef, "return_mean": (returns.sum(-1) / mask.sum(-1).clamp(min=1)).mean().item()}


def ppo_objective(policy, batch, hp, state):
    """Clipped surrogate against the collecting policy + vf_coef * clipped value loss."""
    mask = target_mask(batch.seqs)
    logp, entropy, values = token_logprobs_and_values(policy, state["value_head"], batch.seqs)
    policy_loss, stats = losses.ppo_policy_loss(logp, batch.old_token_logp, batch.extra["advantages"], mask, hp["clip"])
    value_loss, more = losses.ppo_value_loss(values, batch.extra["values"], batch.extra["returns"], mask, hp["value_clip"])
    entropy_mean = losses.masked_mean(entropy, mask).item()
    return policy_loss + hp["vf_coef"] * value_loss, stats | more | {"entropy": entropy_mean, "policy_loss": policy_loss.item()}


# --- contrastive -----------------------------------------------------------------------------------
def dpo_objective(policy, batch, hp, state):
    logp_w, logp_l = _pair_logps(policy, batch)
    return losses.dpo_loss(logp_w, logp_l, batch.ref_logp_chosen, batch.ref_logp_rejected, hp["beta"])


def ipo_objective(policy, batch, hp, state):
    logp_w, logp_l = _pair_logps(policy, batch)
    return losses.ipo_loss(logp_w, logp_l, batch.ref_logp_chosen, batch.ref_logp_rejected, hp["beta"])


def _online_pairs(policy, batch, hp, pair_loss):
    """Pairs of fresh samples ordered by the proxy reward; pairs closer than min_reward_gap are dropped.
    Offline pairs mixed in by trainer.MixedPairs carry rewards (+inf, -inf): always kept, chosen first."""
    logp, stats = _sample_logps(policy, batch)
    logp, ref, rewards = (x.view(-1, 2) for x in (logp, batch.ref_logp, batch.rewards))
    first_wins = rewards[:, 0] >= rewards[:, 1]
    keep = (rewards[:, 0] - rewards[:, 1]).abs() >= hp["min_reward_gap"]
    if not keep.any():
        return logp.sum() * 0.0, stats | {"pairs_kept": 0.0}
    w = torch.where(first_wins, 0, 1)[keep]
    rows = keep.nonzero().squeeze(-1)
    loss, more = pair_loss(logp[rows, w], logp[rows, 1 - w], ref[rows, w], ref[rows, 1 - w], hp["beta"])
    return loss, stats | more | {"pairs_kept": keep.float().mean().item()}


def online_dpo_objective(policy, batch, hp, state):
    return _online_pairs(policy, batch, hp, losses.dpo_loss)


def online_ipo_objective(policy, batch, hp, state):
    return _online_pairs(policy, batch, hp, losses.ipo_loss)


def hypo_objective(policy, batch, hp, state):
    """DPO on the offline pairs + lambda * reverse KL on unlabelled fresh samples of the same prompts. For
    chat, Song et al. add a length penalty to the online term: each sample's penalty is then its KL plus
    `length_penalty` per response token (our reading; the paper's formula is lost in its text)."""
    loss, stats = dpo_objective(policy, batch.pairs, hp, state)
    logp, more = _sample_logps(policy, batch.samples)
    kl = logp.detach() - batch.samples.ref_logp
    penalty = kl + hp["length_penalty"] * target_mask(batch.samples.seqs).sum(-1)
    kl_term = losses.hypo_kl_term(logp.view(-1, batch.samples.k), penalty.view(-1, batch.samples.k))
    return loss + hp["lam"] * kl_term, stats | more | {"online_kl_k1": kl.mean().item(), "dpo_loss": loss.item()}


ALGORITHMS = {a.name: a for a in [
    Algorithm("pref_ft", "max-likelihood", "offline", False, False, pref_ft_objective,
              "Pref-FT: SFT on the preferred responses (Binary FeedME)"),
    Algorithm("offline_bon", "max-likelihood", "offline", False, True, offline_bon_objective,
              "offline best-of-N / filtered BC: likelihood of the RM's best offline sample"),
    Algorithm("offline_rwr", "max-likelihood", "offline", False, True, offline_rwr_objective,
              "offline RWR: likelihood weighted by exp(r / temperature), clipped"),
    Algorithm("bon", "max-likelihood", "on_policy", False, True, bon_objective,
              "iterated best-of-N: likelihood of the best `top` of k fresh samples"),
    Algorithm("rwr", "max-likelihood", "on_policy", False, True, rwr_objective,
              "on-policy RWR on fresh samples"),
    Algorithm("reinforce", "RL", "on_policy", True, True, reinforce_objective,
              "REINFORCE, moving-average baseline, KL penalty"),
    Algorithm("rloo", "RL", "on_policy", True, True, rloo_objective,
              "REINFORCE, leave-one-out baseline, KL penalty to the reference"),
    Algorithm("ppo", "RL", "on_policy", True, True, ppo_objective,
              "PPO: clipped ratio, value head and GAE, per-token KL penalty (fixed or adaptive)",
              prepare=ppo_prepare, value_head=True),
    Algorithm("dpo", "contrastive", "offline", True, False, dpo_objective, "DPO on the preference pairs"),
    Algorithm("ipo", "contrastive", "offline", True, False, ipo_objective, "IPO on the preference pairs"),
    Algorithm("online_dpo", "contrastive", "on_policy", True, True, online_dpo_objective,
              "on-policy DPO: pairs of fresh samples ordered by the RM"),
    Algorithm("online_ipo", "contrastive", "on_policy", True, True, online_ipo_objective,
              "on-policy IPO: pairs of fresh samples ordered by the RM"),
    Algorithm("hypo", "contrastive", "hybrid", True, False, hypo_objective,
              "HyPO: DPO on the pairs + lambda * reverse KL on unlabelled fresh samples"),
]}

_K = (lambda v: _pos_int(v) and v >= 2, "an integer >= 2")
_BETA = (_positive, "a number > 0")
_GAP = (_nonneg, "a number >= 0")
_FRACTION = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1, "a number in [0, 1)")
_KL_ESTIMATOR = (lambda v: v in ("k1", "k3"), "k1 or k3")
_UNIT = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1, "a number in [0, 1]")
# Per-algorithm hyperparameters (params.yaml `algos.<name>.*`): rule and what the rule allows.
HYPERPARAMETERS = {
    "pref_ft": {},
    "offline_bon": {},
    "offline_rwr": {"temperature": (_positive, "a number > 0"), "max_weight": (_positive, "a number > 0")},
    "bon": {"samples_per_prompt": _K, "top": (_pos_int, "a positive integer")},
    "rwr": {"samples_per_prompt": _K, "temperature": (_positive, "a number > 0"), "max_weight": (_positive, "a number > 0")},
    "reinforce": {"samples_per_prompt": (_pos_int, "a positive integer"), "kl_coef": (_nonneg, "a number >= 0"),
                  "baseline_decay": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
                  "kl_estimator": _KL_ESTIMATOR},
    "rloo": {"samples_per_prompt": _K, "kl_coef": (_nonneg, "a number >= 0"), "kl_estimator": _KL_ESTIMATOR},
    "ppo": {"samples_per_prompt": (_pos_int, "a positive integer"), "kl_coef": (_nonneg, "a number >= 0"),
            "adaptive_kl": (lambda v: isinstance(v, bool), "true or false"), "kl_target": _BETA,
            "kl_horizon": (_pos_int, "a positive integer"), "clip": _BETA, "value_clip": _BETA,
            "vf_coef": (_nonneg, "a number >= 0"), "gamma": _UNIT, "gae_lambda": _UNIT},
    "dpo": {"beta": _BETA},
    "ipo": {"beta": _BETA},
    "online_dpo": {"beta": _BETA, "min_reward_gap": _GAP, "offline_fraction": _FRACTION},
    "online_ipo": {"beta": _BETA, "min_reward_gap": _GAP, "offline_fraction": _FRACTION},
    "hypo": {"beta": _BETA, "lam": (_nonneg, "a number >= 0"), "samples_per_prompt": _K,
             "length_penalty": (_nonneg, "a number >= 0")},
}


def samples_per_prompt(name: str, hp: dict) -> int:
    """Fresh samples per prompt: pairwise on-policy methods always draw 2."""
    return 2 if name in ("online_dpo", "online_ipo") else hp.get("samples_per_prompt", 2)


def table_markdown() -> str:
    """The taxonomy, generated from the registry so that it cannot drift from what runs."""
    yes = {True: "yes", False: "no"}
    rows = ["| method | family | samples | on-policy samples | negative gradient | needs reward model |",
            "|---|---|---|---|---|---|"]
    for a in ALGORITHMS.values():
        rows.append(f"| `{a.name}`: {a.description} | {a.family} | {a.source} | {yes[a.source != 'offline']} | "
                    f"{yes[a.negative_gradient]} | {yes[a.needs_reward_model]} |")
    return "\n".join(rows)
