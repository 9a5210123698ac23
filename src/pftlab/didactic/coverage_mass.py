"""Where does DPO put the probability of responses its pairs never mention? (claim 6, Song et al. 2024)

Song et al. (section 6.1.2, Fig. 2 right) run DPO on a multi-armed bandit (independent logits, pairs over
the first half of the responses only) and see the mean probability of the uncovered responses rise. Our
tabular run (didactic/coverage.py) sees it fall. This module isolates why (docs/SETUPS.md, claim 6).

With independent logits theta, log pi(y) = theta_y - logsumexp(theta), so the DPO loss of a pair (w, l)
depends on theta_w - theta_l only and its gradient is -beta * sigmoid(-margin) * (e_w - e_l). Hence under
any optimiser whose step is a linear combination of past minibatch gradients (SGD, with or without
momentum; any lr schedule, beta, pi_ref or batch size):

- no uncovered logit ever moves, and K = the sum of the covered logits never changes;
- the uncovered mass M_U = S_U / (S_U + S_C), S_U = sum_{u uncovered} e^theta_u, moves only through
  S_C = sum_{c covered} e^theta_c: M_U rises exactly when S_C falls;
- on {sum of covered logits = K}, S_C >= |C| e^{K/|C|} (Jensen), with equality iff the covered logits are
  equal. So from any start whose covered logits are equal (the uncovered logits may be anything),
  M_U(t) <= M_U(0) at every step, strictly once the covered logits differ.
- From any other start, M_U(t) > M_U(0) iff E_{c ~ pi_0(.|C)}[e^{d_c}] < 1, d = theta_C(t) - theta_C(0)
  (a zero-sum move). To first order a step moves M_U by M_U * sum_c pi(c) * (-d_c); the first SGD step
  (all margins 0) raises M_U iff E_pairs[pi_0(y_l) - pi_0(y_w)] > 0 (`first_order_rise`): the start
  prefers the responses the data calls worse.

Adam rescales each coordinate, so its step is no longer zero-sum over the covered logits (the
uncovered logits still get a zero gradient, up to rounding); a shared-feature policy (logits = phi @ theta)
moves the uncovered logits through the features. `run_dpo` runs one case; `mass_table` all of them.
"""
import torch

from pftlab.algorithms import losses
from pftlab.core.stats import mean_ci
from pftlab.didactic import coverage

OPTIMISERS = ("sgd", "adam")
PARAMETRISATIONS = ("tabular", "features")   # independent logits; logits = phi @ theta with shared features
STARTS = ("uniform", "random", "anti")       # theta_0 = 0; random; covered logits = -(standardised reward)
DEFAULT_LR = {"sgd": 1.0, "adam": 0.01}      # sgd: per-coordinate gradients are ~ beta * 2.5 / 64 a step


def initial_params(problem: dict, parametrisation: str, start: str, dim: int = 16, scale: float = 2.0):
    """(theta_0, phi); phi (random unit features, one row per response) is None for tabular. The start:
    uniform: all logits 0. random: tabular logits i.i.d. N(0, scale^2); features theta_0 ~ N(0, scale^2 I).
    anti: covered logits -scale * (r - mean r) / std r (the start prefers the worse covered responses),
    uncovered logits 0 (features: theta_0 is the least-squares fit of the covered logits)."""
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"unknown parametrisation {parametrisation!r}")
    if start not in STARTS:
        raise ValueError(f"unknown start {start!r}")
    g, responses, covered = problem["generator"], len(problem["reward"]), problem["covered"]
    phi = None
    if parametrisation == "features":
        phi = torch.randn(responses, dim, generator=g)
        phi = phi / phi.norm(dim=-1, keepdim=True)
    if start == "random":
        return scale * torch.randn(responses if phi is None else dim, generator=g), phi
    logits = torch.zeros(responses)
    if start == "anti":
        r = problem["reward"][:covered]
        logits[:covered] = -scale * (r - r.mean()) / r.std()
    if phi is None:
        return logits, phi
    return torch.linalg.lstsq(phi[:covered], logits[:covered].unsqueeze(1)).solution.squeeze(1), phi


def mass_stats(logits: torch.Tensor, covered: int) -> dict:
    """Uncovered mass, sum of the covered logits, and the uncovered logits (covered = the first `covered`)."""
    logits = logits.detach()
    return {"uncovered_mass": torch.softmax(logits, 0)[covered:].sum().item(),
            "covered_logit_sum": logits[:covered].sum().item(),
            "uncovered_logits": logits[covered:].clone()}


def first_order_rise(log_pi0: torch.Tensor, winners, losers) -> float:
    """E_pairs[pi_0(y_l) - pi_0(y_w)]: for tabular SGD from pi_0 = pi_ref, the first step moves the uncovered
    mass by M_U * (lr * beta / 2) * this (to first order in lr), so it rises iff this is > 0."""
    p = log_pi0.exp()
    return (p[losers] - p[winners]).mean().item()


def dpo_step(params, phi, log_ref, winners, losers, beta: float, opt) -> None:
    """One optimiser step on the DPO loss of a minibatch of pairs."""
    logp = coverage.log_policy(params, phi)
    loss, _ = losses.dpo_loss(logp[winners], logp[losers], log_ref[winners], log_ref[losers], beta)
    opt.zero_grad()
    loss.backward()
    opt.step()


def _optimiser(name: str, params, lr: float):
    if name not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {name!r}")
    return torch.optim.SGD([params], lr=lr) if name == "sgd" else torch.optim.Adam([params], lr=lr)


def seed_starts(seeds, parametrisation: str, start: str, responses: int = 100, pairs: int = 10_000, dim: int = 16,
                start_scale: float = 2.0) -> dict:
    """Each seed's tabular problem (coverage.make_problem) and start (initial_params), stacked over seeds:
    {"problems", "params" [seeds, .], "phi" (None or [seeds, responses, dim]), "covered"}."""
    problems = [coverage.make_problem("tabular", seed, responses=responses, pairs=pairs) for seed in seeds]
    starts = [initial_params(p, parametrisation, start, dim, start_scale) for p in problems]
    phi = None if parametrisation == "tabular" else torch.stack([s[1] for s in starts])
    return {"problems": problems, "params": torch.stack([s[0] for s in starts]), "phi": phi,
            "covered": problems[0]["covered"]}


def _logged(out: list, logits: torch.Tensor, covered: int, step: int) -> None:
    for run, row in zip(out, logits.detach()):
        s = mass_stats(row, covered)
        run["step"].append(step)
        run["uncovered_mass"].append(s["uncovered_mass"])
        run["covered_logit_sum"].append(s["covered_logit_sum"])


def run_dpo_seeds(seeds, optimiser: str = "sgd", parametrisation: str = "tabular", start: str = "uniform",
                  steps: int = 1000, lr: float = None, beta: float = 1.0, batch_size: int = 64, responses: int = 100,
                  pairs: int = 10_000, dim: int = 16, start_scale: float = 2.0, log_every: int = 50) -> list:
    """run_dpo for several seeds at once: one [seeds, .] parameter tensor whose rows never mix (the loss is a sum
    over seeds; SGD and Adam act per coordinate), so a seed's run is its run alone, for the cost of one."""
    lr = DEFAULT_LR.get(optimiser) if lr is None else lr
    s = seed_starts(seeds, parametrisation, start, responses, pairs, dim, start_scale)
    params, phi, covered, problems = s["params"].clone().requires_grad_(True), s["phi"], s["covered"], s["problems"]
    opt = _optimiser(optimiser, params, lr)
    log_ref = torch.log_softmax(coverage.seed_logits(params, phi), -1).detach()
    winners, losers = coverage.padded([p["winners"] for p in problems]), coverage.padded([p["losers"] for p in problems])
    first = [mass_stats(row, covered)["uncovered_logits"] for row in coverage.seed_logits(params, phi)]
    out = [{"step": [], "uncovered_mass": [], "covered_logit_sum": [],
            "first_order_rise": first_order_rise(ref, p["winners"], p["losers"])} for ref, p in zip(log_ref, problems)]
    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:
            _logged(out, coverage.seed_logits(params, phi), covered, step)
        if step == steps:
            break
        # each seed draws its minibatch from its own generator, as it would alone
        batch = coverage.minibatches(problems, batch_size)
        w, l = winners.gather(1, batch), losers.gather(1, batch)
        logp = torch.log_softmax(coverage.seed_logits(params, phi), -1)
        loss, _ = losses.dpo_loss(logp.gather(1, w), logp.gather(1, l), log_ref.gather(1, w), log_ref.gather(1, l), beta)
        opt.zero_grad()
        (loss * len(seeds)).backward()  # the sum over seeds of each seed's mean loss
        opt.step()
    for run, before, row in zip(out, first, coverage.seed_logits(params, phi)):
        run["uncovered_logit_change"] = (mass_stats(row, covered)["uncovered_logits"] - before).abs().max().item()
    return out


def run_rlhf_seeds(seeds, parametrisation: str = "tabular", start: str = "uniform", steps: int = 1000, lr: float = 0.01,
                   beta: float = 1.0, rm_steps: int = 500, responses: int = 100, pairs: int = 10_000, dim: int = 16,
                   start_scale: float = 2.0, log_every: int = 50) -> list:
    """RLHF from the start run_dpo_seeds uses, that start as pi_ref: a Bradley-Terry reward model on the same pairs,
    then Adam on the exact -E_pi[r_hat] + beta KL(pi || pi_ref) (coverage.train's RLHF, at any pi_ref). Returns
    per seed {"step", "uncovered_mass", "covered_logit_sum"}."""
    s = seed_starts(seeds, parametrisation, start, responses, pairs, dim, start_scale)
    params, phi, covered = s["params"].clone().requires_grad_(True), s["phi"], s["covered"]
    reward_hat = coverage.fit_reward_models(s["problems"], phi, rm_steps, lr)
    log_ref = torch.log_softmax(coverage.seed_logits(params, phi), -1).detach()
    opt = torch.optim.Adam([params], lr=lr)
    out = [{"step": [], "uncovered_mass": [], "covered_logit_sum": []} for _ in seeds]
    for step in range(steps + 1):
        logp = torch.log_softmax(coverage.seed_logits(params, phi), -1)
        if step % log_every == 0 or step == steps:
            _logged(out, coverage.seed_logits(params, phi), covered, step)
        if step == steps:
            break
        p = logp.exp()
        loss = (-(p * reward_hat).sum(-1) + beta * (p * (logp - log_ref)).sum(-1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return out


def run_dpo(seed: int, optimiser: str = "sgd", parametrisation: str = "tabular", start: str = "uniform",
            steps: int = 1000, lr: float = None, beta: float = 1.0, batch_size: int = 64, responses: int = 100,
            pairs: int = 10_000, dim: int = 16, start_scale: float = 2.0, log_every: int = 50) -> dict:
    """DPO on coverage.make_problem('tabular', seed) (rewards Unif(-10, 10); BT pairs over the first half of
    the responses only), pi_ref = the starting policy. Returns {"step", "uncovered_mass", "covered_logit_sum"}
    (one entry per logged step, step 0 first), "uncovered_logit_change" (largest |change| of an uncovered
    logit, start to end) and "first_order_rise" (over all pairs, at the start)."""
    return run_dpo_seeds([seed], optimiser, parametrisation, start, steps, lr, beta, batch_size, responses, pairs,
                         dim, start_scale, log_every)[0]


def mass_table(seeds=(0, 1, 2, 3, 4), cases=None, rlhf: dict = None, lrs: dict = None, **kwargs) -> dict:
    """{"<optimiser>/<parametrisation>/<start>": {"start", "end", "max", "covered_logit_sum_change"}}, each a
    list with one number per seed: the uncovered mass at step 0, at the end and its largest logged value, and
    the end - start change of the sum of the covered logits. cases: (optimiser, parametrisation, start)
    triples (default: all 12); lrs: the lr per optimiser (default DEFAULT_LR); kwargs go to run_dpo_seeds. rlhf:
    run_rlhf_seeds's knobs ({"steps", "lr", "beta", "rm_steps"}): adds "rlhf_end", RLHF's uncovered mass at the
    end from the same start as pi_ref, to each case (one RLHF run per parametrisation and start)."""
    cases = cases or [(o, p, s) for o in OPTIMISERS for p in PARAMETRISATIONS for s in STARTS]
    shared = {k: v for k, v in kwargs.items() if k in ("responses", "pairs", "dim", "start_scale", "log_every")}
    table, rlhf_end = {}, {}
    for optimiser, parametrisation, start in cases:
        runs = run_dpo_seeds(list(seeds), optimiser, parametrisation, start, lr=(lrs or DEFAULT_LR).get(optimiser), **kwargs)
        entry = table[f"{optimiser}/{parametrisation}/{start}"] = {
            "start": [r["uncovered_mass"][0] for r in runs],
            "end": [r["uncovered_mass"][-1] for r in runs],
            "max": [max(r["uncovered_mass"]) for r in runs],
            "covered_logit_sum_change": [r["covered_logit_sum"][-1] - r["covered_logit_sum"][0] for r in runs],
            "curve": mass_curve(runs)}
        if rlhf is not None:
            if (parametrisation, start) not in rlhf_end:  # RLHF has no DPO optimiser: one run serves both
                rlhf_runs = run_rlhf_seeds(list(seeds), parametrisation, start, **rlhf, **shared)
                rlhf_end[parametrisation, start] = [r["uncovered_mass"][-1] for r in rlhf_runs]
            entry["rlhf_end"] = rlhf_end[parametrisation, start]
    return table


def mass_curve(runs: list) -> dict:
    """{"step", "mean", "ci95", "min", "max"} of the uncovered mass over seeds at each logged step."""
    by_step = list(zip(*[r["uncovered_mass"] for r in runs]))
    stats = [mean_ci(list(v)) for v in by_step]
    half = lambda h: h if h == h and h != float("inf") else None  # one seed: no interval
    return {"step": runs[0]["step"], "mean": [m for m, _ in stats], "ci95": [half(h) for _, h in stats],
            "min": [min(v) for v in by_step], "max": [max(v) for v in by_step]}


def claim6_table(c: dict, cases: list) -> dict:
    """Claim 6's runs from the params' `coverage` section: DPO on each case for `claim6.steps` iterations (Song et
    al. 6.1.2: 5000) on `pairs` pairs, and RLHF (coverage's lr, beta, rm_steps) from each case's start."""
    k = c["claim6"]
    return mass_table(seeds=c["seeds"], cases=cases, steps=k["steps"], beta=c["beta"], batch_size=c["batch_size"],
                      pairs=c["pairs"], log_every=k["log_every"], lrs={"sgd": k["sgd_lr"], "adam": k["adam_lr"]},
                      rlhf={"steps": k["steps"], "lr": c["lr"], "beta": c["beta"], "rm_steps": c["rm_steps"]})
