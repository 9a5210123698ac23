"""The algorithm table: for each method, its objective and what the loop does around it (its family, sample
source, negative gradient and reward model: taxonomy.py).

An objective turns one micro-batch (batches.PairBatch, SampleBatch or HybridBatch) and the method's typed
hyperparameters `hp` (its dataclass of hyperparameters.py, on the token-level bandit too) into (loss, stats)
with the loss functions of losses.py, its loss a mean over the row's `loss_unit` (rows, response tokens or pairs
kept); `state` carries what persists across steps (REINFORCE's baseline). The step (training/step.py) weighs
each micro-batch by its share of the whole minibatch's units, so the gradient and the logged numbers are the
same however the minibatch is split over micro-batches and processes; what else depends on the whole minibatch
(REINFORCE's baseline) is computed once per optimizer step by the row's `begin_step` and read from `state`. The
loop is the same for every row.
"""
from dataclasses import dataclass
from typing import Callable

import torch

from pftlab.algorithms import losses
from pftlab.algorithms.hyperparameters import ALGORITHM_NAMES
from pftlab.algorithms.losses import Mean
from pftlab.algorithms.taxonomy import TAXONOMY
from pftlab.lm.model import batched, target_mask, token_logprobs, token_logprobs_and_values


@dataclass(frozen=True)
class Algorithm:
    """A method's row: its objective and what the loop does around it; its taxonomy (family, source, negative
    gradient, reward model) is `taxonomy.TAXONOMY[name]`, read through the properties below."""
    name: str
    objective: Callable
    loss_unit: Callable = None  # (batch, hp) -> what the loss averages over in `batch`; None: its rows
    prepare: Callable = None  # once per collected batch, without gradient (PPO: values, GAE advantages)
    begin_step: Callable = None  # once per optimizer step, on the whole minibatch (REINFORCE's baseline)
    value_head: bool = False  # trains a critic on the policy's hidden states (PPO)
    pairs_of_samples: bool = False  # draws exactly 2 fresh samples per prompt (on-policy DPO / IPO)

    family = property(lambda self: TAXONOMY[self.name].family)
    source = property(lambda self: TAXONOMY[self.name].source)
    negative_gradient = property(lambda self: TAXONOMY[self.name].negative_gradient)
    needs_reward_model = property(lambda self: TAXONOMY[self.name].needs_reward_model)

    def units(self, batch, hp) -> int:
        """How many of the loss's units `batch` holds: the weight of a micro-batch in its minibatch."""
        return len(batch) if self.loss_unit is None else self.loss_unit(batch, hp)

    def samples_per_prompt(self, hp) -> int:
        """Fresh samples per prompt (k) of a method that draws them: 2 for pairwise on-policy methods, else its
        `samples_per_prompt`."""
        return 2 if self.pairs_of_samples else hp.samples_per_prompt


def _pair_logps(policy, batch):
    return token_logprobs(policy, batch.chosen).sum(-1), token_logprobs(policy, batch.rejected).sum(-1)


def _sample_logps(policy, batch):
    token_logp, entropy = token_logprobs(policy, batch.seqs, with_entropy=True)
    tokens = target_mask(batch.seqs).sum()
    return token_logp.sum(-1), {"entropy": Mean((entropy.sum() / tokens.clamp(min=1)).item(), tokens.item())}


def _count_response_tokens(batch, hp) -> int:
    """PPO's loss unit: the response tokens of `batch`."""
    return int(target_mask(batch.seqs).sum().item())


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
    return losses.weighted_nll(logp, losses.rwr_weights(rewards, hp.temperature, hp.max_weight))


# --- on-policy, maximum likelihood -----------------------------------------------------------------
def bon_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    weights = losses.best_of_n_weights(batch.rewards.view(-1, batch.k), hp.top).view(-1)
    loss, more = losses.weighted_nll(logp, weights)
    return loss, stats | more


def rwr_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    loss, more = losses.weighted_nll(logp, losses.rwr_weights(batch.rewards, hp.temperature, hp.max_weight))
    return loss, stats | more


# --- on-policy, RL ---------------------------------------------------------------------------------
def _shaped_rewards(batch, hp):
    """r - kl_coef * KL(pi || pi_ref) of each sample, with the chosen estimator (k1 or k3) summed over tokens."""
    penalty = losses.sequence_kl_penalty(batch.old_token_logp, batch.ref_token_logp, target_mask(batch.seqs), hp.kl_estimator)
    return batch.rewards - hp.kl_coef * penalty


def reinforce_begin_step(batch, hp, state):
    """The step's baseline (the moving average before this step; the first step's own mean reward), then the
    average moves once toward this minibatch's mean shaped reward (every process holds the whole minibatch)."""
    mean = _shaped_rewards(batch, hp).mean().item()
    baseline = state.get("baseline", mean)
    state["step_baseline"] = baseline
    state["baseline"] = hp.baseline_decay * baseline + (1 - hp.baseline_decay) * mean


def reinforce_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    baseline = state["step_baseline"]
    loss, more = losses.clipped_policy_gradient_loss(logp, batch.old_logp, _shaped_rewards(batch, hp) - baseline, hp.clip)
    return loss, stats | more | {"baseline": baseline}


def rloo_objective(policy, batch, hp, state):
    logp, stats = _sample_logps(policy, batch)
    shaped = _shaped_rewards(batch, hp)
    advantages = losses.leave_one_out_advantages(shaped.view(-1, batch.k)).view(-1)
    loss, more = losses.clipped_policy_gradient_loss(logp, batch.old_logp, advantages, hp.clip)
    return loss, stats | more


def ppo_prepare(policy, batch, hp, state):
    """At collection: the critic's values, per-token KL-penalised rewards, GAE advantages (whitened) and
    returns; then the adaptive KL controller moves the coefficient toward the target KL."""
    kl_coef = state.setdefault("kl_coef", hp.kl_coef)
    mask = target_mask(batch.seqs)
    values = batched(lambda s: token_logprobs_and_values(policy, state["value_head"], s)[2], batch.seqs)
    token_rewards = losses.kl_penalised_token_rewards(batch.rewards, batch.old_token_logp, batch.ref_token_logp,
                                                      mask, kl_coef)
    advantages, returns = losses.gae_advantages(token_rewards, values, mask, hp.gamma, hp.gae_lambda)
    # whitened over the whole collected batch, as TRL's PPO does (the authors' PPO is TRL's)
    batch.extra = {"values": values, "advantages": losses.masked_whiten(advantages, mask), "returns": returns}
    observed_kl = (batch.old_logp - batch.ref_logp).mean().item()
    if hp.adaptive_kl:
        state["kl_coef"] = losses.adaptive_kl_coef(kl_coef, observed_kl, hp.kl_target, hp.kl_horizon, len(batch.seqs))
    return batch, {"kl_coef": kl_coef, "return_mean": (returns.sum(-1) / mask.sum(-1).clamp(min=1)).mean().item()}


def ppo_objective(policy, batch, hp, state):
    """Clipped surrogate against the collecting policy + vf_coef * clipped value loss, both means over the
    micro-batch's response tokens (the row's loss unit)."""
    mask = target_mask(batch.seqs)
    logp, entropy, values = token_logprobs_and_values(policy, state["value_head"], batch.seqs)
    policy_loss, stats = losses.ppo_policy_loss(logp, batch.old_token_logp, batch.extra["advantages"], mask, hp.clip)
    value_loss, more = losses.ppo_value_loss(values, batch.extra["values"], batch.extra["returns"], mask, hp.value_clip)
    tokens = mask.sum().item()
    return policy_loss + hp.vf_coef * value_loss, \
        stats | more | {"entropy": Mean(losses.masked_mean(entropy, mask).item(), tokens),
                        "policy_loss": Mean(policy_loss.item(), tokens)}


# --- contrastive -----------------------------------------------------------------------------------
def dpo_objective(policy, batch, hp, state):
    logp_w, logp_l = _pair_logps(policy, batch)
    return losses.dpo_loss(logp_w, logp_l, batch.ref_logp_chosen, batch.ref_logp_rejected, hp.beta)


def _ipo_lengths(chosen, rejected, hp):
    """Response lengths for IPO's per-token log-ratios (`length_normalise`), else None (summed log-ratios)."""
    if not hp.length_normalise:
        return None
    return target_mask(chosen).sum(-1), target_mask(rejected).sum(-1)


def ipo_objective(policy, batch, hp, state):
    logp_w, logp_l = _pair_logps(policy, batch)
    return losses.ipo_loss(logp_w, logp_l, batch.ref_logp_chosen, batch.ref_logp_rejected, hp.beta,
                           _ipo_lengths(batch.chosen, batch.rejected, hp))


def _kept_pairs(rewards, hp):
    """Pairs of fresh samples whose proxy rewards differ by at least min_reward_gap (a (pairs, 2) grid)."""
    return (rewards[:, 0] - rewards[:, 1]).abs() >= hp.min_reward_gap


def _count_kept_pairs(batch, hp) -> int:
    """On-policy DPO / IPO's loss unit: the pairs of `batch` that `min_reward_gap` keeps."""
    return int(_kept_pairs(batch.rewards.view(-1, 2), hp).sum().item())


def _online_pairs(policy, batch, hp, pair_loss):
    """Pairs of fresh samples ordered by the proxy reward; pairs closer than min_reward_gap are dropped, and
    the loss is a mean over the kept pairs (the row's loss unit). Offline pairs mixed in by sources.MixedPairs
    carry rewards (+inf, -inf): always kept, chosen first. A micro-batch that keeps none has a zero loss and
    only the stats it can give (entropy, pairs_kept). `pair_loss(logp_w, logp_l, ref_w, ref_l, lengths)`, with
    the response lengths of chosen and rejected."""
    logp, stats = _sample_logps(policy, batch)
    tokens = target_mask(batch.seqs).sum(-1)
    logp, ref, rewards, tokens = (x.view(-1, 2) for x in (logp, batch.ref_logp, batch.rewards, tokens))
    keep = _kept_pairs(rewards, hp)
    kept = {"pairs_kept": Mean(keep.float().mean().item(), len(keep))}
    if not keep.any():
        return logp.sum() * 0.0, stats | kept
    rows = keep.nonzero().squeeze(-1)
    w = torch.where(rewards[:, 0] >= rewards[:, 1], 0, 1)[keep]
    loss, more = pair_loss(logp[rows, w], logp[rows, 1 - w], ref[rows, w], ref[rows, 1 - w],
                           (tokens[rows, w], tokens[rows, 1 - w]))
    return loss, stats | more | kept


def online_dpo_objective(policy, batch, hp, state):
    return _online_pairs(policy, batch, hp, lambda logp_w, logp_l, ref_w, ref_l, lengths:
                         losses.dpo_loss(logp_w, logp_l, ref_w, ref_l, hp.beta))


def online_ipo_objective(policy, batch, hp, state):
    return _online_pairs(policy, batch, hp, lambda logp_w, logp_l, ref_w, ref_l, lengths: losses.ipo_loss(
        logp_w, logp_l, ref_w, ref_l, hp.beta, lengths if hp.length_normalise else None))


def hypo_objective(policy, batch, hp, state):
    """DPO on the offline pairs + lambda * reverse KL on unlabelled fresh samples of the same prompts. For
    chat, Song et al. add a length penalty to the online term: each sample's penalty is then its KL plus
    `length_penalty` per response token (our reading; the paper's formula is lost in its text)."""
    loss, stats = dpo_objective(policy, batch.pairs, hp, state)
    logp, more = _sample_logps(policy, batch.samples)
    kl = logp.detach() - batch.samples.ref_logp
    penalty = kl + hp.length_penalty * target_mask(batch.samples.seqs).sum(-1)
    kl_term = losses.hypo_kl_term(logp.view(-1, batch.samples.k), penalty.view(-1, batch.samples.k))
    return loss + hp.lam * kl_term, stats | more | {"online_kl_k1": Mean(kl.mean().item(), len(kl)),
                                                       "dpo_loss": Mean(loss.item(), len(batch.pairs))}


ALGORITHMS = {a.name: a for a in [
    Algorithm("pref_ft", pref_ft_objective),
    Algorithm("offline_bon", offline_bon_objective),
    Algorithm("offline_rwr", offline_rwr_objective),
    Algorithm("bon", bon_objective),
    Algorithm("rwr", rwr_objective),
    Algorithm("reinforce", reinforce_objective, begin_step=reinforce_begin_step),
    Algorithm("rloo", rloo_objective),
    Algorithm("ppo", ppo_objective, prepare=ppo_prepare, value_head=True, loss_unit=_count_response_tokens),
    Algorithm("dpo", dpo_objective),
    Algorithm("ipo", ipo_objective),
    Algorithm("online_dpo", online_dpo_objective, loss_unit=_count_kept_pairs, pairs_of_samples=True),
    Algorithm("online_ipo", online_ipo_objective, loss_unit=_count_kept_pairs, pairs_of_samples=True),
    Algorithm("hypo", hypo_objective),
]}


assert tuple(ALGORITHMS) == ALGORITHM_NAMES, "algorithms/hyperparameters.py and the table must name the same algorithms"
