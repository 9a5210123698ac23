"""Tajwar et al.'s didactic contextual bandit, as the authors ran it (docs/SETUPS.md, "Didactic bandit"):
100 actions, 100-dim uniform contexts, pi_ref the histogram of tanh(Cauchy(-0.7, 0.4)), a reward peaked
where pi_ref is likely (aligned, peak 20) or unlikely (misaligned, peak 70), an MLP policy initialised
xavier-uniform with a small gain and fitted to pi_ref, N samples per context per collection.

Every run is `collections` collections of N samples per train context, each followed by
`steps_per_collection` full-batch Adam steps on it; the first collection comes from pi_ref itself, the
later ones from the current policy (offline = one collection). The seeds of a cell run as one batched
program: every weight has a leading seed dimension and the loss is the sum of the seeds' losses, so one
Adam over the stacked weights updates each seed exactly as its own Adam would (tests/test_bandit.py checks
that a seed's numbers are the same alone and among others). Evaluation is exact (E_pi[r] and
KL(pi || pi_ref) summed over actions on the eval contexts).
"""
import math

import numpy as np
import torch

from pftlab.algorithms import losses

ACTIONS = 100
CONTEXT_DIM = 100
WIDTHS = (CONTEXT_DIM, 50, 256, 256, ACTIONS)  # 100 -> 50, LayerNorm, ReLU, 256, ReLU, 256, ReLU -> 100 logits


def reference_distribution(samples: int = 10_000, seed: int = 0) -> torch.Tensor:
    """Histogram of tanh(Cauchy(loc=-0.7, scale=0.4)) over 100 equal bins of [-1, 1] (the authors' pi_ref)."""
    rng = np.random.default_rng(seed)
    x = np.tanh(-0.7 + 0.4 * rng.standard_cauchy(samples))
    counts, _ = np.histogram(x, bins=ACTIONS, range=(-1.0, 1.0))
    return torch.tensor(counts / counts.sum(), dtype=torch.float32)


def log_reference() -> torch.Tensor:
    return reference_distribution().log().clamp(min=-30.0)  # empty bins: pi_ref = 0


def peaked_reward(peak: float, width: float = 10.0) -> torch.Tensor:
    """r(a) = exp(-((a - peak) / width)^2) for a = 0..99."""
    a = torch.arange(ACTIONS, dtype=torch.float32)
    return torch.exp(-(((a - peak) / width) ** 2))


# --- the policy: one MLP per seed, stacked ---------------------------------------------------------------
SHAPES = [s for fan_in, fan_out in zip(WIDTHS[:-1], WIDTHS[1:]) for s in ((fan_in, fan_out), (1, fan_out))]
SHAPES += [(1, WIDTHS[1]), (1, WIDTHS[1])]  # (W, b) per linear layer, then LayerNorm's (gamma, beta)


def _padded(shape: tuple) -> tuple:
    """The shape widened in its last dimension until a seed holds a multiple of 64 numbers. Then Adam's
    vectorised kernel treats every seed's numbers alike (no scalar tail), so a seed's results do not depend
    on how many seeds share the run; the padding gets no gradient and stays zero."""
    rows, cols = shape
    while rows * cols % 64:
        cols += 1
    return rows, cols


def unpack(params: list) -> list:
    """[W1, b1, ..., W4, b4, gamma, beta] with a leading seed dimension: views of the padded tensors."""
    return [p[..., :shape[1]] for p, shape in zip(params, SHAPES)]


def init_policy(seeds: list, gain: float) -> list:
    """One MLP per seed, stacked: each seed's weights xavier-uniform with `gain` from its own generator, biases
    zero, LayerNorm gamma one (the authors' init: a policy that starts almost uniform whatever the context)."""
    params = [torch.zeros(len(seeds), *_padded(shape)) for shape in SHAPES]
    tensors = unpack(params)
    for layer, (fan_in, fan_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        for i, seed in enumerate(seeds):
            g = torch.Generator().manual_seed(seed * 1000 + fan_in * 7 + fan_out)
            tensors[2 * layer][i] = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound
    tensors[-2].fill_(1.0)  # LayerNorm gamma
    return [p.requires_grad_(True) for p in params]


def policy_logp(params: list, contexts: torch.Tensor) -> torch.Tensor:
    """log pi(. | context) for every seed: contexts (S, C, 100) -> (S, C, 100)."""
    w1, b1, w2, b2, w3, b3, w4, b4, gamma, beta = unpack(params)
    h = torch.baddbmm(b1, contexts, w1)
    h = torch.nn.functional.layer_norm(h, (h.shape[-1],)) * gamma + beta
    h = torch.relu(torch.baddbmm(b2, torch.relu(h), w2))
    h = torch.relu(torch.baddbmm(b3, h, w3))
    return torch.log_softmax(torch.baddbmm(b4, h, w4), -1)


def fit_to_reference(params, contexts, log_ref, steps: int, lr: float):
    """Minimise KL(pi || pi_ref) on the train contexts (full batch, Adam): where every method starts."""
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # one kernel over all seeds: 5x faster than foreach here
    for _ in range(steps):
        logp = policy_logp(params, contexts)
        loss = (logp.exp() * (logp - log_ref)).sum(-1).mean(-1).sum()  # per seed: mean over contexts
        opt.zero_grad()
        loss.backward()
        opt.step()


def exact_metrics(params, contexts, log_ref, reward) -> dict:
    """Per seed (tensors of shape (S,)): E_pi[r], KL(pi || pi_ref) and entropy, averaged over contexts."""
    with torch.no_grad():
        logp = policy_logp(params, contexts)
        p = logp.exp()
        return {"reward": (p * reward).sum(-1).mean(-1), "kl": (p * (logp - log_ref)).sum(-1).mean(-1),
                "entropy": -(p * logp).sum(-1).mean(-1)}


# --- the methods: a loss per seed on one collection --------------------------------------------------
def _pairs(actions, rewards, min_gap):
    """All pairs of a context's samples ordered by reward: (winner, loser) actions and a keep mask
    (pairs whose rewards differ by less than min_gap are left out)."""
    i, j = torch.triu_indices(actions.shape[-1], actions.shape[-1], 1)
    ri, rj = rewards[..., i], rewards[..., j]
    first = ri >= rj
    ai, aj = actions[..., i], actions[..., j]
    return torch.where(first, ai, aj), torch.where(first, aj, ai), (ri - rj).abs() >= min_gap


def _clipped(logp, old_logp, adv, clip):
    """PPO's clipped surrogate against the collecting policy, per seed."""
    ratio = torch.exp(logp - old_logp)
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean((-2, -1))


def seed_losses(method: str, hp: dict, logp_all, batch: dict, log_ref) -> torch.Tensor:
    """One method's loss for each seed, shape (S,): logp_all (S, C, A), a collection of actions (S, C, N)
    with their rewards and behaviour log-probs."""
    actions, rewards, old_logp = batch["actions"], batch["rewards"], batch["old_logp"]
    logp = logp_all.gather(-1, actions)
    if method == "best_of_n":  # likelihood of each context's best sample, averaged over contexts
        best = rewards.argmax(-1, keepdim=True)
        return -logp.gather(-1, best).squeeze(-1).mean(-1)
    if method == "rwr":
        weights = losses.rwr_weights(rewards, hp["rwr_temperature"], hp["rwr_max_weight"])
        return -(weights * logp).mean((-2, -1))
    if method == "reinforce":  # reward normalised over the collection, exact entropy bonus
        flat = rewards.flatten(1)
        adv = ((rewards - flat.mean(-1)[:, None, None]) / (flat.std(-1)[:, None, None] + 1e-8)).detach()
        entropy = -(logp_all.exp() * logp_all).sum(-1).mean(-1)
        if hp["reinforce_clip"] is None:  # the authors': plain REINFORCE, also on the reused steps of a collection
            return -(adv * logp).mean((-2, -1)) - hp["entropy_coef"] * entropy
        return _clipped(logp, old_logp, adv, hp["reinforce_clip"]) - hp["entropy_coef"] * entropy
    if method == "ppo":  # one-step episodes: the KL-penalised reward minus the context's mean as advantage
        shaped = rewards - hp["kl_coef"] * (old_logp - log_ref[actions])
        adv = (shaped - shaped.mean(-1, keepdim=True)).detach()
        return _clipped(logp, old_logp, adv, hp["clip"])
    w, l, keep = _pairs(actions, rewards, hp["min_reward_gap"])
    pair_losses = losses.dpo_pair_losses if method == "dpo" else losses.ipo_pair_losses
    per_pair = pair_losses(logp_all.gather(-1, w), logp_all.gather(-1, l), log_ref[w], log_ref[l], hp["beta"])
    kept = keep.flatten(1).sum(-1)  # the mean over each seed's kept pairs (0 when it keeps none)
    return (per_pair * keep).flatten(1).sum(-1) / kept.clamp(min=1)


# --- one cell: a method, a setting, a reward, every seed at once -----------------------------------------
def run(method: str, reward, hp: dict, seeds: list, *, train_contexts: int, eval_contexts: int, collections: int,
        steps_per_collection: int, samples_per_context: int, lr: float, log_every: int = 10) -> dict:
    """Train one method on one reward for every seed at once. Returns per-seed results: the curve (exact
    eval reward and KL per seed, samples drawn, every `log_every` steps), and per seed the final reward
    (the mean of the evaluations after each of the last 5 steps), final KL, mean reward over the curve
    (speed) and samples drawn."""
    log_ref = log_reference()
    train, evaluation, params = start(seeds, train_contexts, eval_contexts, hp)
    generators = [torch.Generator().manual_seed(seed + 1) for seed in seeds]
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # one kernel over all seeds: 5x faster than foreach here
    steps = collections * steps_per_collection
    last, curve, samples = [], [], 0
    for step in range(steps + 1):
        if step % log_every == 0 or step >= steps - 4:  # the curve, and the last 5 evaluations
            metrics = exact_metrics(params, evaluation, log_ref, reward)
            if step >= steps - 4:
                last.append(metrics["reward"])
            if step % log_every == 0 or step == steps:
                curve.append({"step": step, "samples": samples, "reward": metrics["reward"].tolist(),
                              "kl": metrics["kl"].tolist()})
        if step == steps:
            break
        if step % steps_per_collection == 0:  # the first collection from pi_ref, the later from the policy
            with torch.no_grad():
                source = log_ref.expand(len(seeds), train_contexts, -1) if step == 0 else policy_logp(params, train)
            batch = collect(source, samples_per_context, generators, reward)
            samples += train_contexts * samples_per_context
        loss = seed_losses(method, hp, policy_logp(params, train), batch, log_ref).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    along = torch.tensor([point["reward"] for point in curve])  # (points, S)
    return {"curve": curve, "final_reward": torch.stack(last).mean(0).tolist(), "final_kl": curve[-1]["kl"],
            "mean_reward": along.mean(0).tolist(), "samples": [samples] * len(seeds)}


def start(seeds: list, train_contexts: int, eval_contexts: int, hp: dict):
    """Each seed's train and eval contexts and its policy fitted to pi_ref (stacked)."""
    train, evaluation = [], []
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        train.append(torch.rand(train_contexts, CONTEXT_DIM, generator=g))
        evaluation.append(torch.rand(eval_contexts, CONTEXT_DIM, generator=g))
    train, evaluation = torch.stack(train), torch.stack(evaluation)
    params = init_policy(seeds, hp["init_gain"])
    fit_to_reference(params, train, log_reference(), hp["fit_steps"], hp["fit_lr"])
    return train, evaluation, params


def collect(logp, n: int, generators: list, reward) -> dict:
    """n samples per context for each seed from its own generator: actions (S, C, n), rewards, log-probs."""
    probs = logp.exp()
    actions = torch.stack([torch.multinomial(probs[s], n, replacement=True, generator=g) for s, g in enumerate(generators)])
    return {"actions": actions, "rewards": reward[actions], "old_logp": logp.gather(-1, actions)}


# --- the cells the stage runs (params `bandit`, the authors' scripts: docs/SETUPS.md) ----------------
def method_hyperparameters(cfg, method: str, sampling: str) -> dict:
    """The loss and start knobs of one cell: shared ones, with the authors' IPO scripts' own pair filter."""
    hp = {k: getattr(cfg, k) for k in ("init_gain", "fit_steps", "fit_lr", "beta", "min_reward_gap", "clip", "kl_coef",
                                       "entropy_coef", "reinforce_clip", "rwr_temperature", "rwr_max_weight")}
    own = _ipo_setting(cfg, method, sampling)
    if own is not None and own.min_reward_gap is not None:
        hp["min_reward_gap"] = own.min_reward_gap
    return hp


def cell_schedule(cfg, method: str, sampling: str) -> dict:
    """Contexts, collections, steps, samples and learning rate of one cell. `reuse_<T>`: the ablation at a
    fixed budget of samples and steps, N*T samples per context in each of steps/T collections."""
    if sampling.startswith("reuse_"):
        t, r = int(sampling.split("_")[1]), cfg.reuse
        return {"train_contexts": r.train_contexts, "eval_contexts": cfg.eval_contexts, "collections": r.steps // t,
                "steps_per_collection": t, "samples_per_context": cfg.samples_per_context * t, "lr": r.lr}
    setting, own = getattr(cfg, sampling), _ipo_setting(cfg, method, sampling)
    pick = lambda name: getattr(own, name) if own is not None and getattr(own, name) is not None else getattr(setting, name)
    return {"train_contexts": pick("train_contexts"), "eval_contexts": cfg.eval_contexts, "collections": setting.collections,
            "steps_per_collection": setting.steps_per_collection, "samples_per_context": cfg.samples_per_context,
            "lr": pick("lr")}


def _ipo_setting(cfg, method, sampling):
    return getattr(cfg.ipo, sampling) if method == "ipo" and cfg.ipo is not None else None
