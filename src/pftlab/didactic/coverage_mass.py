"""Where does DPO put the probability of responses its pairs never mention? (claim 6, Song et al. 2024)

Song et al. (section 6.1.2, Fig. 2 right) run DPO on a multi-armed bandit (independent logits, pairs over
the first half of the responses only) and see the mean probability of the uncovered responses rise. Our
tabular run (didactic/coverage.py) sees it fall. This module isolates why (docs: /tmp/work/claim6.md).

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


def run_dpo(seed: int, optimiser: str = "sgd", parametrisation: str = "tabular", start: str = "uniform",
            steps: int = 1000, lr: float = None, beta: float = 1.0, batch_size: int = 64, responses: int = 100,
            pairs: int = 10_000, dim: int = 16, start_scale: float = 2.0, log_every: int = 50) -> dict:
    """DPO on coverage.make_problem('tabular', seed) (rewards Unif(-10, 10); BT pairs over the first half of
    the responses only), pi_ref = the starting policy. Returns {"step", "uncovered_mass", "covered_logit_sum"}
    (one entry per logged step, step 0 first), "uncovered_logit_change" (largest |change| of an uncovered
    logit, start to end) and "first_order_rise" (over all pairs, at the start)."""
    if optimiser not in OPTIMISERS:
        raise ValueError(f"unknown optimiser {optimiser!r}")
    problem = coverage.make_problem("tabular", seed, responses=responses, pairs=pairs)
    g, covered, winners, losers = problem["generator"], problem["covered"], problem["winners"], problem["losers"]
    params, phi = initial_params(problem, parametrisation, start, dim, start_scale)
    params.requires_grad_(True)
    log_ref = coverage.log_policy(params, phi).detach()
    lr = DEFAULT_LR[optimiser] if lr is None else lr
    opt = torch.optim.SGD([params], lr=lr) if optimiser == "sgd" else torch.optim.Adam([params], lr=lr)
    logits = lambda: params if phi is None else phi @ params
    first = mass_stats(logits(), covered)
    out = {"step": [], "uncovered_mass": [], "covered_logit_sum": [],
           "first_order_rise": first_order_rise(log_ref, winners, losers)}
    for step in range(steps + 1):
        if step % log_every == 0 or step == steps:
            s = mass_stats(logits(), covered)
            out["step"].append(step)
            out["uncovered_mass"].append(s["uncovered_mass"])
            out["covered_logit_sum"].append(s["covered_logit_sum"])
        if step == steps:
            break
        batch = torch.randint(0, len(winners), (batch_size,), generator=g)
        dpo_step(params, phi, log_ref, winners[batch], losers[batch], beta, opt)
    out["uncovered_logit_change"] = (mass_stats(logits(), covered)["uncovered_logits"] - first["uncovered_logits"]).abs().max().item()
    return out


def mass_table(seeds=(0, 1, 2, 3, 4), cases=None, **kwargs) -> dict:
    """{"<optimiser>/<parametrisation>/<start>": {"start", "end", "max", "covered_logit_sum_change"}}, each a
    list with one number per seed: the uncovered mass at step 0, at the end and its largest logged value, and
    the end - start change of the sum of the covered logits. cases: (optimiser, parametrisation, start)
    triples (default: all 12); kwargs go to run_dpo (leave lr unset: DEFAULT_LR per optimiser)."""
    cases = cases or [(o, p, s) for o in OPTIMISERS for p in PARAMETRISATIONS for s in STARTS]
    table = {}
    for optimiser, parametrisation, start in cases:
        runs = [run_dpo(seed, optimiser, parametrisation, start, **kwargs) for seed in seeds]
        table[f"{optimiser}/{parametrisation}/{start}"] = {
            "start": [r["uncovered_mass"][0] for r in runs],
            "end": [r["uncovered_mass"][-1] for r in runs],
            "max": [max(r["uncovered_mass"]) for r in runs],
            "covered_logit_sum_change": [r["covered_logit_sum"][-1] - r["covered_logit_sum"][0] for r in runs]}
    return table
