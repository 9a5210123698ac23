"""The objectives as small functions on log-probabilities: each returns (loss, stats).

Inputs are per-sequence sums of token log-probs (`logp_*`) under the policy and the frozen
reference (`ref_*`). Everything here is checked by hand-worked numbers in tests/test_losses.py.
A stat averaged over something other than the rows it is given (tokens, samples, pairs) is a `Mean`
that carries its count, so that training/step.py combines micro-batches and processes exactly.
"""
import torch
import torch.nn.functional as F


class Mean(float):
    """A logged mean that knows how many items it averages over (a float everywhere else)."""

    def __new__(cls, value, count):
        mean = super().__new__(cls, value)
        mean.count = int(count)
        return mean

    def __reduce__(self):  # pickle and deepcopy through __new__'s two arguments
        return Mean, (float(self), self.count)


def _mean(x: torch.Tensor) -> Mean:
    return Mean(x.float().mean().item(), x.numel())


def _masked(x: torch.Tensor, mask: torch.Tensor) -> Mean:
    return Mean(masked_mean(x, mask).item(), mask.sum().item())


def sft_loss(token_logp: torch.Tensor, mask: torch.Tensor):
    """Mean negative log-likelihood per response token."""
    loss = -(token_logp * mask).sum() / mask.sum().clamp(min=1)
    return loss, {"nll": Mean(loss.item(), mask.sum().item())}


def bradley_terry_loss(score_w: torch.Tensor, score_l: torch.Tensor):
    """Reward-model loss -log sigmoid(s_w - s_l)."""
    loss = -F.logsigmoid(score_w - score_l).mean()
    return loss, {"accuracy": _mean(score_w > score_l)}


def dpo_pair_losses(logp_w, logp_l, ref_w, ref_l, beta: float):
    """DPO (Rafailov et al. 2023) per pair: -log sigmoid(beta * [(logp_w - ref_w) - (logp_l - ref_l)])."""
    return -F.logsigmoid(beta * (logp_w - ref_w) - beta * (logp_l - ref_l))


def dpo_loss(logp_w, logp_l, ref_w, ref_l, beta: float):
    """DPO: the mean of `dpo_pair_losses`, with its stats."""
    reward_w, reward_l = beta * (logp_w - ref_w), beta * (logp_l - ref_l)
    loss = dpo_pair_losses(logp_w, logp_l, ref_w, ref_l, beta).mean()
    return loss, {
        "implicit_reward_chosen": _mean(reward_w),
        "implicit_reward_rejected": _mean(reward_l),
        "margin": _mean(reward_w - reward_l),
        "pair_accuracy": _mean(reward_w > reward_l),
        "logp_chosen": _mean(logp_w),
        "logp_rejected": _mean(logp_l),
    }


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO (Kool et al. 2019) on a (prompts, k) grid: each sample's reward minus the mean of the others."""
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError("leave-one-out needs at least 2 samples per prompt")
    return rewards - (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor):
    """REINFORCE surrogate -mean(A * log pi(y|x)) with A held fixed: its gradient is the policy gradient."""
    advantages = advantages.detach()
    loss = -(advantages * logp).mean()
    return loss, {"advantage_abs": _mean(advantages.abs()), "negative_weight_fraction": _mean(advantages < 0)}


def clipped_policy_gradient_loss(logp, old_logp, advantages, clip: float):
    """REINFORCE on samples drawn by an earlier policy pi_old (sample reuse T > 1, or a later minibatch of
    the same collection): the sequence-level importance ratio pi / pi_old, clipped as PPO clips it (TRL's
    RLOO with several PPO epochs): -mean(min(ratio * A, clip(ratio, 1 - c, 1 + c) * A)). At ratio 1 the
    gradient is the policy gradient's; where the ratio has left [1 - c, 1 + c] in the advantage's direction
    the sample stops pushing."""
    advantages = advantages.detach()
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = -advantages * ratio, -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = torch.maximum(unclipped, clipped).mean()
    return loss, {"advantage_abs": _mean(advantages.abs()), "negative_weight_fraction": _mean(advantages < 0),
                  "clip_fraction": _mean(clipped > unclipped)}


def kl_estimates(token_logp: torch.Tensor, token_ref_logp: torch.Tensor, mask: torch.Tensor):
    """Per-sequence reverse KL(pi || pi_ref) estimates from samples of pi, summed over tokens.

    k1 = sum_t (log pi - log pi_ref): unbiased, can be negative on one sample.
    k3 = sum_t (ratio - 1 - log ratio), ratio = pi_ref / pi: unbiased and never negative (Schulman 2020).
    """
    log_ratio = (token_ref_logp - token_logp) * mask
    k1 = -log_ratio.sum(-1)
    k3 = ((log_ratio.exp() - 1 - log_ratio) * mask).sum(-1)
    return k1, k3


def ipo_pair_losses(logp_w, logp_l, ref_w, ref_l, beta: float, lengths=None):
    """IPO (Azar et al. 2023) per pair: (h - 1/(2 beta))^2 with h the log-ratio margin; a finite optimum, unlike DPO.
    With `lengths` (response tokens of chosen and rejected), each log-ratio is first divided by its response's
    length: the form the IPO authors confirmed their results use, and TRL's `loss_type="ipo"`."""
    return (_ipo_log_ratios(logp_w, logp_l, ref_w, ref_l, lengths)[2] - 1.0 / (2.0 * beta)) ** 2


def _ipo_log_ratios(logp_w, logp_l, ref_w, ref_l, lengths):
    ratio_w, ratio_l = logp_w - ref_w, logp_l - ref_l
    if lengths is not None:
        ratio_w, ratio_l = ratio_w / lengths[0].clamp(min=1), ratio_l / lengths[1].clamp(min=1)
    return ratio_w, ratio_l, ratio_w - ratio_l


def ipo_loss(logp_w, logp_l, ref_w, ref_l, beta: float, lengths=None):
    """IPO: the mean of `ipo_pair_losses`, with its stats (implicit rewards and margin of the log-ratios the
    loss uses: per token with `lengths`, as TRL logs them)."""
    ratio_w, ratio_l, h = _ipo_log_ratios(logp_w, logp_l, ref_w, ref_l, lengths)
    loss = ((h - 1.0 / (2.0 * beta)) ** 2).mean()
    return loss, {"margin": _mean(beta * h), "pair_accuracy": _mean(h > 0),
                  "implicit_reward_chosen": _mean(beta * ratio_w), "implicit_reward_rejected": _mean(beta * ratio_l),
                  "logp_chosen": _mean(logp_w), "logp_rejected": _mean(logp_l)}


def weighted_nll(logp: torch.Tensor, weights: torch.Tensor):
    """Maximum likelihood on weighted samples, -mean(w * log pi(y|x)) with w >= 0: never a negative gradient."""
    weights = weights.detach()
    if (weights < 0).any():
        raise ValueError("maximum-likelihood weights must be >= 0")
    loss = -(weights * logp).sum() / weights.numel()
    return loss, {"weight_mean": _mean(weights), "negative_weight_fraction": Mean(0.0, weights.numel())}


def best_of_n_weights(rewards: torch.Tensor, top: int) -> torch.Tensor:
    """1 on the `top` highest-reward samples of each prompt (rows of a (prompts, n) grid), 0 elsewhere."""
    index = rewards.topk(top, dim=-1).indices
    return torch.zeros_like(rewards).scatter(-1, index, 1.0)


def rwr_weights(rewards: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """Reward-weighted regression: exp(r / temperature) per sample, clipped at max_weight (Peters & Schaal 2007)."""
    return torch.exp(rewards / temperature).clamp(max=max_weight)


def hypo_kl_term(logp: torch.Tensor, kl: torch.Tensor):
    """HyPO's online reverse-KL term (Song et al. 2024, docs/SETUPS.md): the KL k_i = sum_t log pi/pi_ref of
    unlabelled fresh samples, on a (prompts, k) grid, minimised by REINFORCE with the leave-one-out
    baseline and the coefficient under stop-gradient: mean_i[ sg(k_i - mean of the others) * log pi(y_i|x) ]."""
    return (leave_one_out_advantages(kl.detach()) * logp).mean()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit variance over the masked entries (PPO's advantage normalisation). The variance is the
    unbiased one (times n / (n - 1)), as TRL's `masked_whiten` (`masked_var(unbiased=True)`) computes it."""
    mean = masked_mean(x, mask)
    count = mask.sum()
    if count < 2:
        raise ValueError("whitening needs at least 2 masked entries (the unbiased variance divides by n - 1)")
    var = masked_mean((x - mean) ** 2, mask) * (count / (count - 1))
    return (x - mean) * torch.rsqrt(var + 1e-8) * mask


def kl_penalised_token_rewards(score, token_logp_old, token_ref_logp, mask, kl_coef: float):
    """PPO's per-token reward (Ziegler et al. 2019): -kl_coef * log(pi/pi_ref) at every response token,
    plus the reward model's score at the last one. Rows are (B, T) aligned with token_logprobs."""
    rewards = -kl_coef * (token_logp_old - token_ref_logp) * mask
    last = (mask * torch.arange(mask.shape[1], device=mask.device)).argmax(-1)  # index of the last response token
    rewards[torch.arange(len(score), device=score.device), last] += score
    return rewards


def gae_advantages(token_rewards, values, mask, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al. 2016) over response tokens; returns (A, A + V).

    values[t] estimates the return from token t on; it counts as 0 past the last response token."""
    values = values * mask
    advantages = torch.zeros_like(token_rewards)
    running = torch.zeros(token_rewards.shape[0], dtype=token_rewards.dtype, device=token_rewards.device)
    next_value = torch.zeros_like(running)
    for t in reversed(range(token_rewards.shape[1])):
        delta = token_rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
        next_value = values[:, t]
    return advantages, (advantages + values) * mask


def ppo_policy_loss(token_logp, token_logp_old, advantages, mask, clip: float):
    """PPO's clipped surrogate, averaged over response tokens, against the policy that collected the batch."""
    ratio = torch.exp(token_logp - token_logp_old)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, {"clip_fraction": _masked((clipped > unclipped).float(), mask),
                  "approx_kl_behaviour": _masked(0.5 * (token_logp - token_logp_old) ** 2, mask),
                  "negative_weight_fraction": _masked((advantages < 0).float(), mask)}


def ppo_value_loss(values, values_old, returns, mask, clip: float):
    """Clipped value loss 0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within `clip` of the old value.
    `value_clip_fraction` is TRL's `val/clipfrac`: the share of response tokens where the clipped error is the
    larger, i.e. where clipping decides the loss (not merely where V left the clip range)."""
    clipped = values_old + (values - values_old).clamp(-clip, clip)
    unclipped_error, clipped_error = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_error, clipped_error), mask)
    return loss, {"value_loss": Mean(loss.item(), mask.sum().item()),
                  "value_clip_fraction": _masked((clipped_error > unclipped_error).float(), mask)}


def adaptive_kl_coef(kl_coef: float, observed_kl: float, target: float, horizon: int, n_samples: int) -> float:
    """Ziegler et al. (2019): move the KL coefficient so the observed KL tracks `target`, at most 20% per horizon."""
    error = max(-0.2, min(0.2, observed_kl / target - 1.0))
    return kl_coef * (1.0 + error * n_samples / horizon)


def sequence_kl_penalty(token_logp, token_ref_logp, mask, estimator: str):
    """Per-sequence penalty sum_t KL_t from samples of pi: k1 = log(pi/pi_ref), k3 = ratio - 1 - log ratio."""
    k1, k3 = kl_estimates(token_logp, token_ref_logp, mask)
    return k1 if estimator == "k1" else k3
