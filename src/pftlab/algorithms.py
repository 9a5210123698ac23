"""The algorithm table: for each method, where its samples come from, whether its loss has a negative
gradient (pushes some sampled response down), whether it needs a reward model, and its objective.

An objective turns one minibatch (see trainer.PairBatch / trainer.SampleBatch) into (loss, stats)
using the loss functions of losses.py. The trainer is the same for every row.
"""
from dataclasses import dataclass
from typing import Callable

from . import losses
from .model import token_logprobs, target_mask
from .params import _pos_int, _positive


@dataclass(frozen=True)
class Algorithm:
    name: str
    source: str  # "offline" (the preference pairs) | "on_policy" (fresh samples) | "hybrid" (both)
    negative_gradient: bool
    needs_reward_model: bool
    objective: Callable
    description: str


def dpo_objective(policy, batch, hp):
    logp_w = token_logprobs(policy, batch.chosen).sum(-1)
    logp_l = token_logprobs(policy, batch.rejected).sum(-1)
    return losses.dpo_loss(logp_w, logp_l, batch.ref_logp_chosen, batch.ref_logp_rejected, hp["beta"])


def rloo_objective(policy, batch, hp):
    token_logp, entropy = token_logprobs(policy, batch.seqs, with_entropy=True)
    logp = token_logp.sum(-1)
    k = hp["samples_per_prompt"]
    shaped = losses.kl_penalised_rewards(batch.rewards, batch.old_logp, batch.ref_logp, hp["kl_coef"])
    advantages = losses.leave_one_out_advantages(shaped.view(-1, k)).view(-1)
    loss, stats = losses.policy_gradient_loss(logp, advantages)
    stats["entropy"] = (entropy.sum() / target_mask(batch.seqs).sum()).item()
    return loss, stats


ALGORITHMS = {
    a.name: a
    for a in [
        Algorithm("dpo", "offline", True, False, dpo_objective, "DPO on the preference pairs"),
        Algorithm("rloo", "on_policy", True, True, rloo_objective,
                  "REINFORCE, leave-one-out baseline, KL penalty to the reference"),
    ]
}

# Per-algorithm hyperparameters (params.yaml `algos.<name>.*`): rule and what the rule allows.
HYPERPARAMETERS = {
    "dpo": {"beta": (_positive, "a number > 0")},
    "rloo": {
        "samples_per_prompt": (lambda v: _pos_int(v) and v >= 2, "an integer >= 2"),
        "kl_coef": (lambda v: isinstance(v, (int, float)) and v >= 0, "a number >= 0"),
    },
}


def table_markdown() -> str:
    """The taxonomy, generated from the registry so that it cannot drift from what runs."""
    yes = {True: "yes", False: "no"}
    rows = ["| method | samples | on-policy samples | negative gradient | needs reward model |",
            "|---|---|---|---|---|"]
    for a in ALGORITHMS.values():
        rows.append(f"| {a.name} ({a.description}) | {a.source} | {yes[a.source != 'offline']} | "
                    f"{yes[a.negative_gradient]} | {yes[a.needs_reward_model]} |")
    return "\n".join(rows)
