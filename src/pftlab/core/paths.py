"""Where each artifact of the synthetic LLM task lives: the outputs and metrics its stages declare in core/pipeline.py.

The main task (labelled by `gold.reward`) uses the top-level layout; every gold reward listed under
`variants.rewards` gets the same layout under `variants/<reward>/`. Both label the same SFT samples
(data/sft_samples/), so tasks differ only in their labels and everything trained on them. A policy trained
with another seed (`training_seeds`: the same SFT model, pairs and reward model) lives under
`training_seeds/<algorithm>/s<seed>`: one folder per algorithm, the output of its stage seeds@<algorithm>, which
trains and evaluates every seed in one process.
"""
import sys
from dataclasses import dataclass

from pftlab.core.pipeline import KINDS, SEED_RUNS, SFT_MODEL, curve_of, metrics_of, output_of


@dataclass(frozen=True)
class Task:
    variant: str = ""  # "" = the main task; else a gold reward of `variants.rewards`
    seed: int = None  # None = the policy trained with params `seed`; else one of `training_seeds.seeds`

    @property
    def pairs_dir(self) -> str:
        return output_of(Task(self.variant).stage("pairs"))  # a training seed's: its task's (seeds share them)

    @property
    def pairs(self) -> str:
        return f"{self.pairs_dir}/pairs.jsonl"

    @property
    def gold(self) -> str:
        return f"{self.pairs_dir}/gold.json"

    @property
    def reward_model(self) -> str:
        return output_of(Task(self.variant).stage("reward_model"))

    def policy(self, name: str) -> str:
        return SFT_MODEL if name == "sft" else output_of(self.stage("policy", name))

    def eval_samples(self, name: str) -> str:
        return output_of(self.stage("evaluate", name))

    def metrics(self, kind: str, name: str = "") -> str:
        """The metrics file of the stage `stage(kind, name)` names, as core/pipeline.py declares it:
        metrics/[variants/<gold>/]pairs.json, .../policy/<name>.json, .../eval/<name>.json, and
        metrics/training_seeds/<name>/s<seed>/{policy,eval}.json for a training seed's."""
        return metrics_of(self.stage(kind, name))

    def curve(self, kind: str, name: str = "") -> str:
        """The training curve of the stage `stage(kind, name)` names, as core/pipeline.py declares it:
        metrics/[variants/<gold>/]curves/reward_model.csv, .../policy_<name>.csv, and a training seed's
        metrics/curves/training_seeds/<name>/policy_s<seed>.csv (in the folder stage seeds@<name> plots)."""
        return curve_of(self.stage(kind, name))

    def stage(self, kind: str, name: str = "") -> str:
        """The name of the stage (core/pipeline.py) that runs `kind` ("pairs", "reward_model", "policy", "evaluate")
        of this task: policy@dpo, policy_variant@mode_length-dpo, reward_model_variant@mode_length. A training
        seed's runs are parts of stage seeds@<name> (`seeds_stage`): policy_seed@dpo-1 and evaluate_seed@dpo-1 name
        them in MLflow, checkpoints and progress bars. The SFT policy's evaluation is evaluate@sft (DVC's stage
        evaluate_sft) and, on a variant, evaluate_variant_sft@<gold>: DVC's matrix holds the algorithms only."""
        values = (name,) if name else ()
        if self.seed is not None:
            return SEED_RUNS[f"{kind}_seed"].stage(*values, self.seed)
        if not self.variant:
            return KINDS[kind].stage(*values)
        if kind == "evaluate" and name == "sft":
            return KINDS["evaluate_variant_sft"].stage(self.variant)
        return KINDS[f"{kind}_variant"].stage(self.variant, *values)


def seeds_stage(name: str) -> str:
    """The DVC stage that trains and evaluates every training seed of policy `name`."""
    return KINDS["seeds"].stage(name)


def seed_folders(name: str) -> list:
    """The output folders of stage seeds@<name>: its models, samples, metrics and curves, one sub-folder per seed."""
    seeds = KINDS["seeds"]
    return [seeds.expand(path, (name,)) for path in [*seeds.outs, *seeds.metrics, *(c.path for c in seeds.plots)]]


def task_from_argv(argv=None) -> Task:
    """The task a stage's command line names: `--variant <gold reward>`, else the main task."""
    args = sys.argv[1:] if argv is None else argv
    if "--variant" not in args:
        return Task()
    i = args.index("--variant")
    if i + 1 >= len(args):
        raise SystemExit("--variant needs a value")
    return Task(args[i + 1])
