"""The papers' taxonomy: for each method, its family, where its samples come from, whether its loss has a
negative gradient (pushes some sampled response down) and whether it needs a reward model.

Torch-free, apart from the objectives (table.py): the report reads the taxonomy without loading a model
library, and editing an objective does not rerun the report (`python -m pftlab.core.deps --fanout`)."""
from dataclasses import dataclass

from pftlab.algorithms.hyperparameters import ALGORITHM_NAMES


@dataclass(frozen=True)
class Taxonomy:
    family: str  # "max-likelihood" | "RL" | "contrastive"
    source: str  # "offline" (the preference pairs) | "on_policy" (fresh samples) | "hybrid" (both)
    negative_gradient: bool
    needs_reward_model: bool
    description: str


TAXONOMY = {
    "pref_ft": Taxonomy("max-likelihood", "offline", False, False,
                         "Pref-FT: SFT on the preferred responses (Binary FeedME)"),
    "offline_bon": Taxonomy("max-likelihood", "offline", False, True,
                         "offline best-of-N / filtered BC: likelihood of the RM's best offline sample"),
    "offline_rwr": Taxonomy("max-likelihood", "offline", False, True,
                         "offline RWR: likelihood weighted by exp(r / temperature), clipped"),
    "bon": Taxonomy("max-likelihood", "on_policy", False, True,
                         "iterated best-of-N: likelihood of the best `top` of k fresh samples"),
    "rwr": Taxonomy("max-likelihood", "on_policy", False, True,
                         "on-policy RWR on fresh samples"),
    "reinforce": Taxonomy("RL", "on_policy", True, True,
                         "REINFORCE, moving-average baseline, KL penalty; clipped importance ratio to the collecting policy"),
    "rloo": Taxonomy("RL", "on_policy", True, True,
                         "REINFORCE, leave-one-out baseline, KL penalty; clipped importance ratio to the collecting policy"),
    "ppo": Taxonomy("RL", "on_policy", True, True,
                         "PPO: clipped ratio, value head and GAE, per-token KL penalty (fixed or adaptive)"),
    "dpo": Taxonomy("contrastive", "offline", True, False,
                         "DPO on the preference pairs"),
    "ipo": Taxonomy("contrastive", "offline", True, False,
                         "IPO on the preference pairs"),
    "online_dpo": Taxonomy("contrastive", "on_policy", True, True,
                         "on-policy DPO: pairs of fresh samples ordered by the RM"),
    "online_ipo": Taxonomy("contrastive", "on_policy", True, True,
                         "on-policy IPO: pairs of fresh samples ordered by the RM"),
    "hypo": Taxonomy("contrastive", "hybrid", True, False,
                         "HyPO: DPO on the pairs + lambda * reverse KL on unlabelled fresh samples"),
}


def table_markdown() -> str:
    """The taxonomy as a markdown table (README, report), so that the two cannot drift from what runs."""
    yes = {True: "yes", False: "no"}
    rows = ["| method | family | samples | on-policy samples | negative gradient | needs reward model |",
            "|---|---|---|---|---|---|"]
    for name, a in TAXONOMY.items():
        rows.append(f"| `{name}`: {a.description} | {a.family} | {a.source} | {yes[a.source != 'offline']} | "
                    f"{yes[a.negative_gradient]} | {yes[a.needs_reward_model]} |")
    return "\n".join(rows)


assert tuple(TAXONOMY) == ALGORITHM_NAMES, "algorithms/hyperparameters.py and the taxonomy must name the same algorithms"
