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


def seed_logits(params: torch.Tensor, phi) -> torch.Tensor:
    """[seeds, responses] logits of a batch of seeds: params [seeds, responses] (tabular) or [seeds, dim] with
    phi [seeds, responses, dim]."""
    return params if phi is None else (phi @ params.unsqueeze(-1)).squeeze(-1)


def padded(tensors: list) -> torch.Tensor:
    """Stack 1-d tensors of unequal length (each seed keeps a different number of pairs), padded with 0; padding is
    never indexed, since each seed draws indices below its own length."""
    out = torch.zeros(len(tensors), max(len(t) for t in tensors), dtype=tensors[0].dtype)
    for i, t in enumerate(tensors):
        out[i, :len(t)] = t
    return out


def stacked_phi(problems: list):
    return None if problems[0]["phi"] is None else torch.stack([p["phi"] for p in problems])


def fit_reward_models(problems: list, phi, steps: int, lr: float) -> torch.Tensor:
    """[seeds, responses] Bradley-Terry maximum likelihood, linear in each seed's phi (or tabular), full batch with
    Adam from 0, for a batch of seeds at once (a seed's rows never mix with another's)."""
    winners, losers = padded([p["winners"] for p in problems]), padded([p["losers"] for p in problems])
    counts = torch.tensor([float(len(p["winners"])) for p in problems])
    mask = torch.arange(winners.shape[1]) < counts.unsqueeze(1)  # the padding adds nothing
    params = torch.zeros(len(problems), len(problems[0]["reward"]) if phi is None else phi.shape[-1], requires_grad=True)
    opt = torch.optim.Adam([params], lr=lr)
    for _ in range(steps):
        r = seed_logits(params, phi)
        pair_losses = -torch.nn.functional.logsigmoid(r.gather(1, winners) - r.gather(1, losers))
        loss = ((pair_losses * mask).sum(1) / counts).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return seed_logits(params, phi).detach()


def fit_reward_model(problem, steps: int, lr: float):
    """Bradley-Terry maximum likelihood, linear in phi (or tabular), full batch."""
    return fit_reward_models([problem], stacked_phi([problem]), steps, lr)[0]


def minibatches(problems: list, batch_size: int) -> torch.Tensor:
    """[seeds, batch] pair indices, each seed's from its own generator, as it would draw alone."""
    return torch.stack([torch.randint(0, len(p["winners"]), (batch_size,), generator=p["generator"]) for p in problems])


def _point(step: int, logp: torch.Tensor, problem: dict, preferred: torch.Tensor, log_ref: torch.Tensor) -> dict:
    p = logp.exp()
    return {"step": step, "logp_preferred": logp[preferred].mean().item(), "logp_best": logp[problem["best"]].item(),
            "uncovered_mass": p[problem["covered"]:].sum().item(), "kl": (p * (logp - log_ref)).sum().item(),
            "reward": (p * problem["reward"]).sum().item()}


def train_seeds(problems: list, method: str, hp: dict, log_every: int = 50) -> list:
    """train() for several problems (seeds) of one kind at once: one [seeds, .] parameter tensor whose rows never mix
    (the loss is the sum of the seeds' losses; Adam acts per coordinate), each seed drawing from its own generator in
    the order it would alone. Returns one curve per problem."""
    phi, n, seeds = stacked_phi(problems), len(problems[0]["reward"]), len(problems)
    log_ref = torch.full((seeds, n), -torch.log(torch.tensor(float(n))))
    theta = torch.zeros(seeds, n if phi is None else phi.shape[-1], requires_grad=True)
    opt = torch.optim.Adam([theta], lr=hp["lr"])
    preferred = []
    for p in problems:
        winners = torch.unique(p["winners"])
        preferred.append(winners[torch.randperm(len(winners), generator=p["generator"])[: hp["preferred_subset"]]])
    reward_hat = fit_reward_models(problems, phi, hp["rm_steps"], hp["lr"]) if method == "rlhf" else None
    winners, losers = padded([p["winners"] for p in problems]), padded([p["losers"] for p in problems])
    curves = [[] for _ in problems]
    for step in range(hp["steps"] + 1):
        logp = torch.log_softmax(seed_logits(theta, phi), -1)
        if step % log_every == 0 or step == hp["steps"]:
            for curve, row, ref, problem, pref in zip(curves, logp.detach(), log_ref, problems, preferred):
                curve.append(_point(step, row, problem, pref, ref))
        if step == hp["steps"]:
            break
        kl = (logp.exp() * (logp - log_ref)).sum(-1)
        if method == "rlhf":
            loss = (-(logp.exp() * reward_hat).sum(-1) + hp["beta"] * kl).sum()
        else:
            batch = minibatches(problems, hp["batch_size"])
            w, l = winners.gather(1, batch), losers.gather(1, batch)
            loss, _ = losses.dpo_loss(logp.gather(1, w), logp.gather(1, l), log_ref.gather(1, w), log_ref.gather(1, l), hp["beta"])
            loss = loss * seeds  # the sum over seeds of each seed's mean loss
            if method == "hypo":
                loss = loss + hp["lam"] * kl.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return curves


def train(problem, method: str, hp: dict, log_every: int = 50) -> list:
    """The curve [{step, logp_preferred, logp_best, uncovered_mass, kl, reward}] of one method."""
    return train_seeds([problem], method, hp, log_every)[0]
