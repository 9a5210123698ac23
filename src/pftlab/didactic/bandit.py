"""Tajwar et al.'s didactic contextual bandit, as the authors ran it (docs/SETUPS.md, "Didactic bandit"):
100 actions, 100-dim uniform contexts, pi_ref the histogram of tanh(Cauchy(-0.7, 0.4)) drawn anew for every
run (here: for every seed), a reward peaked where pi_ref is likely (aligned, peak 20) or unlikely (misaligned,
peak 70), an MLP policy initialised xavier-uniform with a small gain and fitted to pi_ref, N samples per
context per collection.

Every run is `collections` collections of N samples per train context, each followed by
`steps_per_collection` full-batch Adam steps on it; the first collection comes from pi_ref itself, the
later ones from the current policy (offline = one collection). The seeds of a cell run as one batched
program: every weight has a leading seed dimension and the loss is the sum of the seeds' losses, so one
Adam over the stacked weights updates each seed exactly as its own Adam would (tests/test_bandit.py checks
that a seed's numbers are the same alone and among others). Every random draw of a seed comes from its own
stream per purpose (`stream_seed`). Evaluation is exact (E_pi[r] and KL(pi || pi_ref) summed over actions on
the eval contexts).
"""
import hashlib
import math

import numpy as np
import torch

from pftlab.algorithms import losses

ACTIONS = 100
CONTEXT_DIM = 100
WIDTHS = (CONTEXT_DIM, 50, 256, 256, ACTIONS)  # 100 -> 50, LayerNorm, ReLU, 256, ReLU, 256, ReLU -> 100 logits
EPS = torch.finfo(torch.float32).eps  # torch's clamp_probs bound for float32: 1.19e-7
FIXED_REFERENCE_SEED = 0  # `reference: fixed`: every seed shares the histogram of numpy seed 0 (our earlier variant)


def stream_seed(seed: int, purpose: str) -> int:
    """The seed of one random stream, a 63-bit hash of (purpose, seed): no two purposes or seeds share a stream
    (plain seed + k offsets did: seed s's samples came from seed s+1's context generator)."""
    digest = hashlib.sha256(f"{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, purpose))


def reference_distribution(samples: int = 10_000, seed: int = FIXED_REFERENCE_SEED) -> torch.Tensor:
    """Histogram of tanh(Cauchy(loc=-0.7, scale=0.4)) over 100 equal bins of [-1, 1] (the authors' pi_ref),
    from numpy's generator seeded `seed`."""
    rng = np.random.default_rng(seed)
    x = np.tanh(-0.7 + 0.4 * rng.standard_cauchy(samples))
    counts, _ = np.histogram(x, bins=ACTIONS, range=(-1.0, 1.0))
    return torch.tensor(counts / counts.sum(), dtype=torch.float32)


def seed_reference(seed: int, reference: str = "per_seed") -> torch.Tensor:
    """A seed's pi_ref: its own draw (`per_seed`, as the authors draw one per run: hyperparam_tuning.py:438-456
    samples it before seeding) or the one histogram every seed shares (`fixed`)."""
    return reference_distribution(seed=stream_seed(seed, "reference") if reference == "per_seed" else FIXED_REFERENCE_SEED)


def log_reference(seed: int = 0, reference: str = "fixed") -> torch.Tensor:
    return seed_reference(seed, reference).log().clamp(min=-30.0)  # empty bins: pi_ref = 0


def log_references(seeds: list, reference: str) -> torch.Tensor:
    """Each seed's log pi_ref, shape (S, 1, 100): broadcasts over a seed's contexts."""
    return torch.stack([log_reference(seed, reference) for seed in seeds])[:, None, :]


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
    """One MLP per seed, stacked: each seed's weights xavier-uniform with `gain` from its own stream per layer,
    biases zero, LayerNorm gamma one (the authors' init: a policy that starts almost uniform whatever the context)."""
    params = [torch.zeros(len(seeds), *_padded(shape)) for shape in SHAPES]
    tensors = unpack(params)
    for layer, (fan_in, fan_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
        for i, seed in enumerate(seeds):
            g = generator(seed, f"init_layer{layer}")
            tensors[2 * layer][i] = (torch.rand(fan_in, fan_out, generator=g) * 2 - 1) * bound
    tensors[-2].fill_(1.0)  # LayerNorm gamma
    return [p.requires_grad_(True) for p in params]


def policy_logits(params: list, contexts: torch.Tensor) -> torch.Tensor:
    """The MLP's logits for every seed: contexts (S, C, 100) -> (S, C, 100)."""
    w1, b1, w2, b2, w3, b3, w4, b4, gamma, beta = unpack(params)
    h = torch.baddbmm(b1, contexts, w1)
    h = torch.nn.functional.layer_norm(h, (h.shape[-1],)) * gamma + beta
    h = torch.relu(torch.baddbmm(b2, torch.relu(h), w2))
    h = torch.relu(torch.baddbmm(b3, h, w3))
    return torch.baddbmm(b4, h, w4)


def policy_logp(params: list, contexts: torch.Tensor) -> torch.Tensor:
    """log pi(. | context) for every seed, exact (sampling and evaluation): (S, C, 100)."""
    return torch.log_softmax(policy_logits(params, contexts), -1)


def clamped_logp(logits: torch.Tensor) -> torch.Tensor:
    """The authors' log-probabilities: Categorical(probs=softmax(logits)).log_prob (bandit_agents.py:120-124,
    174-177) takes log(clamp(p, eps, 1 - eps)) (torch.distributions.utils.probs_to_logits), so an action with
    p < eps = 1.19e-7 has log-prob log(eps) and no gradient."""
    return torch.log(torch.softmax(logits, -1).clamp(EPS, 1 - EPS))


def training_logp(params: list, contexts: torch.Tensor, how: str) -> torch.Tensor:
    """The log-probabilities every training loss uses: `clamped` (the authors') or `log_softmax` (ours before)."""
    logits = policy_logits(params, contexts)
    return clamped_logp(logits) if how == "clamped" else torch.log_softmax(logits, -1)


def fit_to_reference(params, contexts, log_ref, steps: int, lr: float, how: str = "log_softmax"):
    """Minimise KL(pi || pi_ref) on the train contexts (full batch, Adam): where every method starts. The
    authors' kl_divergence(Categorical, pi_data) weighs their (clamped) log-probs by the softmax
    (bandit_learner.py:28-49)."""
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # one kernel over all seeds: 5x faster than foreach here
    for _ in range(steps):
        logits = policy_logits(params, contexts)
        probs = torch.softmax(logits, -1)
        logp = torch.log(probs.clamp(EPS, 1 - EPS)) if how == "clamped" else torch.log_softmax(logits, -1)
        loss = (probs * (logp - log_ref)).sum(-1).mean(-1).sum()  # per seed: mean over contexts
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


# --- REINFORCE's baseline ------------------------------------------------------------------------------
def new_baseline_state(seeds: int) -> dict:
    zeros = torch.zeros(seeds, dtype=torch.float64)
    return {"sum": zeros, "squares": zeros.clone(), "count": 0}


def running_zscores(rewards: torch.Tensor, state: dict) -> tuple:
    """The authors' REINFORCE baseline (bandit_learner.py:963-979): each sample of each step, in collection order,
    joins running sums (a reused sample again on every step), and is z-scored with the mean and population
    variance of every sample seen so far, itself included. rewards (S, C, N) -> (z-scores, the new state)."""
    flat = rewards.flatten(1).double()  # python floats in theirs
    count = state["count"] + torch.arange(1, flat.shape[-1] + 1, dtype=torch.float64)
    total = state["sum"][:, None] + flat.cumsum(-1)
    squares = state["squares"][:, None] + (flat * flat).cumsum(-1)
    mean = total / count
    variance = ((squares - total * total / count) / count).clamp(min=0.0)  # rounding can dip below zero
    z = (flat - mean) / (variance.sqrt() + 1e-12)
    return z.float().view_as(rewards), {"sum": total[:, -1], "squares": squares[:, -1], "count": int(count[-1])}


def collection_zscores(rewards: torch.Tensor) -> torch.Tensor:
    """Our earlier baseline: rewards z-scored over the collection (sample std)."""
    flat = rewards.flatten(1)
    return (rewards - flat.mean(-1)[:, None, None]) / (flat.std(-1)[:, None, None] + 1e-8)


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


def reinforce_entropy(logp_all, logp, estimate: str) -> torch.Tensor:
    """REINFORCE's entropy bonus per seed: `sampled`, the authors' minus the mean log-prob of the collection's
    samples (bandit_learner.py:981-996), or `exact`, the entropy summed over actions, averaged over contexts."""
    if estimate == "sampled":
        return -logp.mean((-2, -1))
    return -(logp_all.exp() * logp_all).sum(-1).mean(-1)


def seed_losses(method: str, hp, logp_all, batch: dict, log_ref) -> torch.Tensor:
    """One method's loss for each seed, shape (S,): `hp` its typed hyperparameters (config.BanditAlgos; None for
    best-of-N), logp_all (S, C, A), a collection of actions (S, C, N) with their rewards and behaviour log-probs,
    and (REINFORCE) their advantages; log_ref (S, 1, A)."""
    actions, rewards, old_logp = batch["actions"], batch["rewards"], batch["old_logp"]
    logp = logp_all.gather(-1, actions)
    ref_logp = lambda a: log_ref.expand(*logp_all.shape).gather(-1, a)
    if method == "best_of_n":  # likelihood of each context's best sample, averaged over contexts
        best = rewards.argmax(-1, keepdim=True)
        return -logp.gather(-1, best).squeeze(-1).mean(-1)
    if method == "rwr":
        weights = losses.rwr_weights(rewards, hp.temperature, hp.max_weight)
        return -(weights * logp).mean((-2, -1))
    if method == "reinforce":  # normalised reward (the baseline: `run`), entropy bonus
        adv = batch["advantages"].detach()
        entropy = reinforce_entropy(logp_all, logp, hp.entropy_estimate)
        if hp.clip is None:  # the authors': plain REINFORCE, also on the reused steps of a collection
            return -(adv * logp).mean((-2, -1)) - hp.entropy_coef * entropy
        return _clipped(logp, old_logp, adv, hp.clip) - hp.entropy_coef * entropy
    if method == "ppo":  # one-step episodes: the KL-penalised reward minus the context's mean as advantage
        shaped = rewards - hp.kl_coef * (old_logp - ref_logp(actions))
        adv = (shaped - shaped.mean(-1, keepdim=True)).detach()
        return _clipped(logp, old_logp, adv, hp.clip)
    w, l, keep = _pairs(actions, rewards, hp.min_reward_gap)
    pair_losses = losses.dpo_pair_losses if method == "dpo" else losses.ipo_pair_losses
    per_pair = pair_losses(logp_all.gather(-1, w), logp_all.gather(-1, l), ref_logp(w), ref_logp(l), hp.beta)
    kept = keep.flatten(1).sum(-1)  # the mean over each seed's kept pairs (0 when it keeps none)
    return (per_pair * keep).flatten(1).sum(-1) / kept.clamp(min=1)


# --- one cell: a method, a setting, a reward, every seed at once -----------------------------------------
def run(method: str, reward, setup, hp, seeds: list, *, train_contexts: int, eval_contexts: int, collections: int,
        steps_per_collection: int, samples_per_context: int, lr: float, log_every: int = 10, log_steps=()) -> dict:
    """Train one method on one reward for every seed at once, from `setup` (the section's start knobs: init_gain,
    fit_steps, fit_lr, logp, reference) with the method's typed hyperparameters `hp`. Returns per-seed results:
    the curve (exact eval reward and KL per seed, fresh samples drawn so far, every `log_every` steps and at
    `log_steps`), and per seed the final reward (the mean of the evaluations after each of the last 5 steps),
    final KL and entropy, mean reward over the curve (speed) and fresh samples drawn."""
    log_ref = log_references(seeds, setup.reference)
    train, evaluation, params = start(seeds, train_contexts, eval_contexts, setup, log_ref)
    generators = [generator(seed, "samples") for seed in seeds]
    opt = torch.optim.Adam(params, lr=lr, fused=True)  # one kernel over all seeds: 5x faster than foreach here
    steps = collections * steps_per_collection
    last, curve, samples, baseline = [], [], 0, new_baseline_state(len(seeds))
    for step in range(steps + 1):
        logged = step % log_every == 0 or step in log_steps or step == steps
        if logged or step >= steps - 4:  # the curve, and the last 5 evaluations
            metrics = exact_metrics(params, evaluation, log_ref, reward)
            if step >= steps - 4:
                last.append(metrics["reward"])
            if logged:
                curve.append({"step": step, "samples": samples, "reward": metrics["reward"].tolist(),
                              "kl": metrics["kl"].tolist()})
        if step == steps:
            break
        if step % steps_per_collection == 0:  # the first collection from pi_ref, the later from the policy
            batch = _collection(params, train, log_ref, step, samples_per_context, generators, reward, setup.logp)
            samples += train_contexts * samples_per_context
            if method == "reinforce" and hp.baseline == "collection":
                batch["advantages"] = collection_zscores(batch["rewards"])
        if method == "reinforce" and hp.baseline == "running":  # every step adds the samples again
            batch["advantages"], baseline = running_zscores(batch["rewards"], baseline)
        loss = seed_losses(method, hp, training_logp(params, train, setup.logp), batch, log_ref).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    along = torch.tensor([point["reward"] for point in curve])  # (points, S)
    return {"curve": curve, "final_reward": torch.stack(last).mean(0).tolist(), "final_kl": curve[-1]["kl"],
            "final_entropy": metrics["entropy"].tolist(), "mean_reward": along.mean(0).tolist(),
            "samples": [samples] * len(seeds)}


def _collection(params, train, log_ref, step, n, generators, reward, how) -> dict:
    """A collection of n samples per context: at step 0 from pi_ref, later from the policy; its behaviour
    log-probs in the training losses' form (PPO's ratio is 1 at the first step on it)."""
    with torch.no_grad():
        if step == 0:
            source = log_ref.expand(len(generators), train.shape[1], -1)
            return collect(source, n, generators, reward)
        logits = policy_logits(params, train)
        batch = collect(torch.log_softmax(logits, -1), n, generators, reward)
        if how == "clamped":
            batch["old_logp"] = clamped_logp(logits).gather(-1, batch["actions"])
        return batch


def start(seeds: list, train_contexts: int, eval_contexts: int, setup, log_ref=None):
    """Each seed's train and eval contexts (each from its own stream) and its policy fitted to its pi_ref (stacked)."""
    if log_ref is None:
        log_ref = log_references(seeds, setup.reference)
    train = torch.stack([torch.rand(train_contexts, CONTEXT_DIM, generator=generator(s, "train_contexts")) for s in seeds])
    evaluation = torch.stack([torch.rand(eval_contexts, CONTEXT_DIM, generator=generator(s, "eval_contexts")) for s in seeds])
    params = init_policy(seeds, setup.init_gain)
    fit_to_reference(params, train, log_ref, setup.fit_steps, setup.fit_lr, setup.logp)
    return train, evaluation, params


def collect(logp, n: int, generators: list, reward) -> dict:
    """n samples per context for each seed from its own generator: actions (S, C, n), rewards, log-probs."""
    probs = logp.exp()
    actions = torch.stack([torch.multinomial(probs[s], n, replacement=True, generator=g) for s, g in enumerate(generators)])
    return {"actions": actions, "rewards": reward[actions], "old_logp": logp.gather(-1, actions)}


# --- the cells the stage runs (params `bandit`, the authors' scripts: docs/SETUPS.md) ----------------
def equal_compute_step(t: int, steps: int, sample_cost: float) -> float:
    """The step at which T = 1 has spent the compute of T's whole run (reporting/claims.py `compute_used`: a fresh
    sample costs c, a gradient step passes its collection of n samples once). T's run draws steps/T collections,
    T = 1's first k steps draw k: (c steps/T + steps) n = k (c + 1) n."""
    return steps * (sample_cost / t + 1) / (sample_cost + 1)


def reuse_log_steps(r) -> tuple:
    """The steps at which the reuse study's curves are logged besides every 10th: where each T's run ends its
    last collection's budget (steps / T), so T = 1 is read at every other T's fresh-sample budget, and the
    steps either side of each T's compute (`sample_costs`), so T = 1 is read there by interpolation."""
    at = {r.steps // t for t in r.values}
    if r.collection_size == "fixed":
        for c in r.sample_costs:
            for t in r.values:
                k = equal_compute_step(t, r.steps, c)
                at |= {math.floor(k), min(math.ceil(k), r.steps)}
    return tuple(sorted(at))


def cell_schedule(cfg, method: str, sampling: str) -> dict:
    """Contexts, collections, steps, samples and learning rate of one cell. `reuse_<T>`: the reuse study at a
    fixed number of gradient steps, T steps on each of steps/T collections of N samples per context
    (`collection_size: fixed`, fresh samples fall as T grows) or of N*T (`grows_with_T`: samples fixed too)."""
    if sampling.startswith("reuse_"):
        t, r = int(sampling.split("_")[1]), cfg.reuse
        n = cfg.samples_per_context * (t if r.collection_size == "grows_with_T" else 1)
        return {"train_contexts": r.train_contexts, "eval_contexts": cfg.eval_contexts, "collections": r.steps // t,
                "steps_per_collection": t, "samples_per_context": n, "lr": r.lr, "log_steps": reuse_log_steps(r)}
    setting, own = getattr(cfg, sampling), _ipo_setting(cfg, method, sampling)
    pick = lambda name: getattr(own, name) if own is not None and getattr(own, name) is not None else getattr(setting, name)
    return {"train_contexts": pick("train_contexts"), "eval_contexts": cfg.eval_contexts, "collections": setting.collections,
            "steps_per_collection": setting.steps_per_collection, "samples_per_context": cfg.samples_per_context,
            "lr": pick("lr")}


def _ipo_setting(cfg, method, sampling):
    return getattr(cfg.ipo, sampling) if method == "ipo" and cfg.ipo is not None else None
