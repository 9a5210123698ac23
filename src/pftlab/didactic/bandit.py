"""Tajwar et al.'s didactic contextual bandit (docs/SETUPS.md): 100 actions, 100-dim contexts, pi_ref the
histogram of tanh(Cauchy(-0.7, 0.4)), a reward peaked where pi_ref is likely (aligned, peak 20) or
unlikely (misaligned, peak 70), an MLP policy fitted to pi_ref, N samples per context per collection.

Offline = one collection from pi_ref, then every gradient step on it; on-policy = a fresh collection
from the current policy every T steps (T = sample reuse). The objectives are losses.py's, the same
functions the LLM trainer uses. Evaluation is exact: E_pi[r] and KL(pi || pi_ref) summed over actions.
"""
import functools

import numpy as np
import torch
from torch import nn

from pftlab.algorithms import losses

ACTIONS = 100
CONTEXT_DIM = 100


def reference_distribution(samples: int = 10_000, seed: int = 0) -> torch.Tensor:
    """Histogram of tanh(Cauchy(loc=-0.7, scale=0.4)) over 100 equal bins of [-1, 1] (the authors' pi_ref)."""
    rng = np.random.default_rng(seed)
    x = np.tanh(-0.7 + 0.4 * rng.standard_cauchy(samples))
    counts, _ = np.histogram(x, bins=ACTIONS, range=(-1.0, 1.0))
    return torch.tensor(counts / counts.sum(), dtype=torch.float32)


def peaked_reward(peak: float, width: float = 10.0) -> torch.Tensor:
    """r(a) = exp(-((a - peak) / width)^2) for a = 0..99."""
    a = torch.arange(ACTIONS, dtype=torch.float32)
    return torch.exp(-(((a - peak) / width) ** 2))


class MLPPolicy(nn.Module):
    """100 -> 50, LayerNorm, ReLU, 256, 256 -> 100 logits (the authors' bandit policy)."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(CONTEXT_DIM, 50), nn.LayerNorm(50), nn.ReLU(), nn.Linear(50, 256), nn.ReLU(),
                                 nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, ACTIONS))

    def forward(self, contexts):
        return torch.log_softmax(self.net(contexts), -1)


def fit_to_reference(policy, contexts, log_ref, steps: int = 100, lr: float = 1e-3):
    """Minimise KL(pi || pi_ref) on the contexts: the starting point of every method."""
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    for _ in range(steps):
        logp = policy(contexts)
        loss = (logp.exp() * (logp - log_ref)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy


def exact_metrics(policy, contexts, log_ref, reward) -> dict:
    with torch.no_grad():
        logp = policy(contexts)
        p = logp.exp()
        return {"reward": (p * reward).sum(-1).mean().item(), "kl": (p * (logp - log_ref)).sum(-1).mean().item(),
                "entropy": -(p * logp).sum(-1).mean().item()}


def _pairs(actions, rewards, min_gap):
    """All pairs of a context's N samples ordered by reward, pairs closer than min_gap skipped."""
    i, j = torch.triu_indices(actions.shape[1], actions.shape[1], 1)
    ri, rj = rewards[:, i], rewards[:, j]
    keep = (ri - rj).abs() > min_gap
    rows = torch.arange(actions.shape[0]).unsqueeze(-1).expand_as(ri)[keep]
    first = (ri >= rj)[keep]
    ai, aj = actions[:, i][keep], actions[:, j][keep]
    return rows, torch.where(first, ai, aj), torch.where(first, aj, ai)


def objective(method: str, hp: dict, logp_all, batch, log_ref, state):
    """One method's loss on a collected batch: actions (C, N), rewards, behaviour log-probs."""
    actions, rewards, old_logp = batch["actions"], batch["rewards"], batch["old_logp"]
    if method in ("best_of_n", "dpo", "ipo"):  # groups of N: with reuse T a collection holds T groups per context
        n = hp["group_size"]
        actions, rewards, old_logp = (x.reshape(-1, n) for x in (actions, rewards, old_logp))
        logp_all = logp_all.repeat_interleave(actions.shape[0] // logp_all.shape[0], 0)
    logp = logp_all.gather(-1, actions)
    ref = log_ref.expand_as(logp_all).gather(-1, actions)
    if method == "best_of_n":
        return losses.weighted_nll(logp, losses.best_of_n_weights(rewards, 1))[0]
    if method == "rwr":
        return losses.weighted_nll(logp, losses.rwr_weights(rewards, hp["rwr_temperature"], hp["rwr_max_weight"]))[0]
    if method == "reinforce":  # normalised reward, entropy bonus (the authors' variant)
        adv = (rewards - rewards.mean()) / (rewards.std() + 1e-8)
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
        return losses.policy_gradient_loss(logp, adv)[0] - hp["entropy_coef"] * entropy
    if method == "ppo":  # one-step episodes: the KL-penalised reward minus the context's mean as advantage
        shaped = rewards - hp["kl_coef"] * (old_logp - ref)
        adv = shaped - shaped.mean(-1, keepdim=True)
        loss, stats = losses.ppo_policy_loss(logp, old_logp, adv, torch.ones_like(logp), hp["clip"])
        state["clip_fraction"] = stats["clip_fraction"]
        return loss
    rows, w, l = _pairs(actions, rewards, hp["min_reward_gap"])
    if len(rows) == 0:
        return logp.sum() * 0.0
    pair_loss = losses.dpo_loss if method == "dpo" else losses.ipo_loss
    return pair_loss(logp_all[rows, w], logp_all[rows, l], log_ref[w], log_ref[l], hp["beta"])[0]


@functools.lru_cache(maxsize=16)
def _start(seed: int, train_contexts: int, eval_contexts: int, fit_steps: int):
    """Contexts and the policy fitted to pi_ref for one seed, shared by every method run on that seed."""
    g = torch.Generator().manual_seed(seed)
    train = torch.rand(train_contexts, CONTEXT_DIM, generator=g)
    evaluation = torch.rand(eval_contexts, CONTEXT_DIM, generator=g)
    torch.manual_seed(seed)
    policy = fit_to_reference(MLPPolicy(), train, _log_ref(), fit_steps)
    return train, evaluation, {k: v.clone() for k, v in policy.state_dict().items()}


@functools.lru_cache(maxsize=1)
def _log_ref():
    return reference_distribution().log().clamp(min=-30.0)  # empty bins: pi_ref = 0


def run(method: str, reward, sampling: str, hp: dict, seed: int, steps: int, reuse: int, samples_per_context: int,
        log_every: int = 10, group_size: int = None) -> list:
    """Train one method; returns the curve [{step, samples, reward, kl, entropy}] on the eval contexts.

    `sampling` is "offline" (one collection of `samples_per_context` from pi_ref, all `steps` on it) or
    "on_policy" (a collection from the current policy every `reuse` steps). Best-of-N and the pairs of
    DPO / IPO are formed within groups of `group_size` samples of one context (default: all of them)."""
    log_ref = _log_ref()
    train_contexts, eval_contexts, start = _start(seed, hp["train_contexts"], hp["eval_contexts"], hp["fit_steps"])
    policy = MLPPolicy()
    policy.load_state_dict(start)
    g = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(policy.parameters(), lr=hp["lr"])
    hp = {**hp, "group_size": group_size or samples_per_context}  # best-of-N and pairs are formed within groups
    curve, samples, batch, state = [], 0, None, {}

    def collect(dist_logits):
        actions = torch.multinomial(dist_logits.exp(), samples_per_context, replacement=True, generator=g)
        return {"actions": actions, "rewards": reward[actions], "old_logp": dist_logits.gather(-1, actions)}

    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:
            curve.append({"step": step, "samples": samples, **exact_metrics(policy, eval_contexts, log_ref, reward)})
        if step == steps:
            break
        if batch is None or (sampling == "on_policy" and step % reuse == 0):
            with torch.no_grad():
                source = policy(train_contexts) if sampling == "on_policy" else log_ref.expand(len(train_contexts), -1)
                batch = collect(source)
            samples += batch["actions"].numel()
        loss = objective(method, hp, policy(train_contexts), batch, log_ref, state)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return curve
