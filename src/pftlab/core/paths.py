"""Where each artifact of the synthetic LLM task lives.

The main task (labelled by `gold.reward`) uses the top-level layout; every gold reward listed under
`variants.rewards` gets the same layout under `variants/<reward>/`. Both label the same SFT samples
(data/sft_samples/), so tasks differ only in their labels and everything trained on them. A policy trained
with another seed (`training_seeds`: the same SFT model, pairs and reward model) lives under
`training_seeds/s<seed>/`.
"""
import sys
from dataclasses import dataclass

SFT_SAMPLES = "data/sft_samples/samples.jsonl"
SFT_MODEL = "models/sft"
EVAL_REFERENCE = "data/eval/reference.jsonl"  # the SFT draw every win rate is judged against


@dataclass(frozen=True)
class Task:
    variant: str = ""  # "" = the main task; else a gold reward of `variants.rewards`
    seed: int = None  # None = the policy trained with params `seed`; else one of `training_seeds.seeds`

    def _at(self, top: str, rest: str) -> str:
        return f"{top}/variants/{self.variant}/{rest}" if self.variant else f"{top}/{rest}"

    def _trained(self, top: str, rest: str) -> str:
        """Where what a policy run makes lives: per training seed, beside the task's shared data."""
        return self._at(top, rest) if self.seed is None else f"{top}/training_seeds/s{self.seed}/{rest}"

    @property
    def pairs_dir(self) -> str:
        return self._at("data", "pairs")

    @property
    def pairs(self) -> str:
        return f"{self.pairs_dir}/pairs.jsonl"

    @property
    def gold(self) -> str:
        return f"{self.pairs_dir}/gold.json"

    @property
    def reward_model(self) -> str:
        return self._at("models", "reward_model")

    def policy(self, name: str) -> str:
        return SFT_MODEL if name == "sft" else self._trained("models", f"policy/{name}")

    def eval_samples(self, name: str) -> str:
        return self._trained("data", f"eval/{name}.jsonl")

    def metrics(self, kind: str, name: str = "") -> str:
        """metrics/<kind>.json, or metrics/<kind>/<name>.json for per-policy kinds (policy, eval)."""
        return self._trained("metrics", f"{kind}/{name}.json") if name else self._at("metrics", f"{kind}.json")

    def curve(self, kind: str, name: str = "") -> str:
        return self._trained("metrics", f"curves/{kind}_{name}.csv") if name else self._at("metrics", f"curves/{kind}.csv")

    def stage(self, kind: str, name: str = "") -> str:
        """The DVC stage name: policy@dpo, policy_variant@mode_length-dpo, reward_model_variant@mode_length,
        policy_seed@dpo-1."""
        if self.seed is not None:
            return f"{kind}_seed@{name}-{self.seed}"
        if not self.variant:
            return f"{kind}@{name}" if name else kind
        if kind == "evaluate" and name == "sft":  # a stage of its own: DVC's matrix holds the algorithms only
            return f"evaluate_variant_sft@{self.variant}"
        return f"{kind}_variant@{self.variant}-{name}" if name else f"{kind}_variant@{self.variant}"


def task_from_argv(argv=None) -> Task:
    """The task a stage's command line names: `--variant <gold reward>` or `--seed <training seed>` (a policy
    of the main task trained with another seed), else the main task."""
    args = sys.argv[1:] if argv is None else argv
    if "--variant" in args and "--seed" in args:
        raise SystemExit("--variant and --seed: training seeds are of the main task only")
    if "--seed" in args:
        seed = _value(args, "--seed")
        if not seed.isdigit():
            raise SystemExit(f"--seed needs an integer >= 0 (got {seed!r})")
        return Task(seed=int(seed))
    return Task(_value(args, "--variant")) if "--variant" in args else Task()


def _value(args: list, flag: str) -> str:
    i = args.index(flag)
    if i + 1 >= len(args):
        raise SystemExit(f"{flag} needs a value")
    return args[i + 1]
