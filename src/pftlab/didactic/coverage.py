"""Song et al.'s synthetic coverage experiments (section 6.1, docs/SETUPS.md), over a finite set of responses
with pi_ref uniform:

- `linear`: softmax-linear policies on 16-dim features (99 random unit vectors plus a special one for
  the best response), Bradley-Terry pairs over the first 50 responses only. With function
  approximation the data has global coverage: DPO and RLHF both lower the log-prob of the preferred
  responses while raising that of the unseen best one (extrapolation).
- `tabular`: independent logits (a multi-armed bandit), pairs over the first half of the responses.
  Nothing ties the uncovered responses to the data, and DPO can move mass onto them; RLHF's reverse
  KL (and HyPO's online KL term) keep them near pi_ref.

RLHF = fit a reward model on the pairs by Bradley-Terry, then gradient ascent on the exact
KL-regularised objective E_pi[r_hat] - beta KL(pi || pi_ref). DPO = minibatch SGD on the pairs with
losses.dpo_loss. HyPO = DPO + lambda * the exact reverse KL (the finite-set value of the term the LLM
trainer estimates from samples).
"""
import torch

from pftlab.algorithms import losses

METHODS = ("rlhf", "dpo", "hypo")


def make_problem(kind: str, seed: int, responses: int = 100, dim: int = 16, pairs: int = 10_000,
                 reward_range: float = 10.0) -> dict:
    """Features (None for tabular), true rewards, and BT-labelled pairs (winner, loser) over the covered half."""
    g = torch.Generator().manual_seed(seed)
    covered = responses // 2
    if kind == "linear":
        phi = torch.randn(responses - 1, dim, generator=g)
        phi = torch.cat([phi / phi.norm(dim=-1, keepdim=True), torch.eye(dim)[:1]])  # y_100: the special e_1
        w = torch.empty(dim).uniform_(-2.0, 2.0, generator=g)
        w[0] = 0.0
        # The first entry makes the special (uncovered) response the best: r(e_1) = w_1 must exceed
        # w_1 * phi_i1 + (the rest of <w, phi_i>) for every other i.
        rest = phi[:-1] @ w
        w[0] = (rest / (1.0 - phi[:-1, 0])).max().clamp(min=0.0) + 1.0
        reward = phi @ w
    elif kind == "tabular":
        phi = None
        reward = torch.empty(responses).uniform_(-reward_range, reward_range, generator=g)
    else:
        raise ValueError(f"unknown coverage problem {kind!r}")
    a, b = torch.randint(0, covered, (2, pairs), generator=g)
    keep = a != b
    a, b = a[keep], b[keep]
    first = torch.rand(len(a), generator=g) < torch.sigmoid(reward[a] - reward[b])
    winners, losers = torch.where(first, a, b), torch.where(first, b, a)
    return {"phi": phi, "reward": reward, "winners": winners, "losers": losers, "covered": covered,
            "best": int(reward.argmax()), "generator": g}


def log_policy(theta, phi):
    return torch.log_softmax(theta if phi is None else phi @ theta, 0)


def fit_reward_model(problem, steps: int, lr: float):
    """Bradley-Terry maximum likelihood, linear in phi (or tabular), full batch."""
    phi = problem["phi"]
    params = torch.zeros(len(problem["reward"]) if phi is None else phi.shape[1], requires_grad=True)
    opt = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        r = params if phi is None else phi @ params
        loss, _ = losses.bradley_terry_loss(r[problem["winners"]], r[problem["losers"]])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return (params if phi is None else phi @ params).detach()


def train(problem, method: str, hp: dict, log_every: int = 50) -> list:
    """The curve [{step, logp_preferred, logp_best, uncovered_mass, kl, reward}] of one method."""
    phi, n = problem["phi"], len(problem["reward"])
    log_ref = torch.full((n,), -torch.log(torch.tensor(float(n))))
    theta = torch.zeros(n if phi is None else phi.shape[1], requires_grad=True)
    opt = torch.optim.Adam([theta], lr=hp["lr"])
    g = problem["generator"]
    preferred = torch.unique(problem["winners"])
    preferred = preferred[torch.randperm(len(preferred), generator=g)[: hp["preferred_subset"]]]
    reward_hat = fit_reward_model(problem, hp["rm_steps"], hp["lr"]) if method == "rlhf" else None
    curve = []
    for step in range(hp["steps"] + 1):
        logp = log_policy(theta, phi)
        if step % log_every == 0 or step == hp["steps"]:
            p = logp.detach().exp()
            curve.append({"step": step, "logp_preferred": logp[preferred].mean().item(),
                          "logp_best": logp[problem["best"]].item(),
                          "uncovered_mass": p[problem["covered"]:].sum().item(),
                          "kl": (p * (logp.detach() - log_ref)).sum().item(),
                          "reward": (p * problem["reward"]).sum().item()})
        if step == hp["steps"]:
            break
        kl = (logp.exp() * (logp - log_ref)).sum()
        if method == "rlhf":
            loss = -(logp.exp() * reward_hat).sum() + hp["beta"] * kl
        else:
            batch = torch.randint(0, len(problem["winners"]), (hp["batch_size"],), generator=g)
            w, l = problem["winners"][batch], problem["losers"][batch]
            loss, _ = losses.dpo_loss(logp[w], logp[l], log_ref[w], log_ref[l], hp["beta"])
            if method == "hypo":
                loss = loss + hp["lam"] * kl
        opt.zero_grad()
        loss.backward()
        opt.step()
    return curve
