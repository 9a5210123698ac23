"""The pipeline, declared once: every kind of stage, what it runs, reads and writes.

dvc.yaml is generated from `KINDS` and `PLOTS` (`python -m pftlab.core.deps --write`; `--check` and
tests/test_dvc_deps.py fail when the committed file differs), adding to each stage the code it runs: its
script's import closure. A stage's runs (`run_stage`) take their params and metrics file from here, and may read
no other params; stage names (`Kind.stage`) and MLflow's policy runs (`Kind.policy_run`) follow the grammar here.

A kind is one entry of dvc.yaml: a single stage (`sft`), one per item of a params list (`foreach`:
policy@dpo) or one per combination of two (`matrix`: policy_variant@mode_length-dpo, DVC joins the values
with '-'). In its fields `${item}` (foreach) or `${item.<key>}` (matrix) stands for that stage's value.
The stage seeds@<algo> holds several runs of its own (`SEED_RUNS`: policy_seed@dpo-1, evaluate_seed@dpo-1),
named like stages in MLflow, checkpoints and progress bars. Config only: every stage imports this module.

Adding a stage: a `Kind` below and its script (`run_stage("<name>", main)`), then `python -m pftlab.core.deps --write`.
"""
from dataclasses import dataclass, field

ALGORITHMS = "${algorithms}"
GOLD_REWARDS = "${variants.rewards}"
VARIANT_ALGORITHMS = "${variants.algorithms}"


@dataclass(frozen=True)
class InGit:
    """An output kept in git rather than DVC's cache (curves, the report); a plain path is cached."""
    path: str


@dataclass(frozen=True)
class Curve:
    """A plot of a stage: a CSV file (or a folder of them) of `y` against `x`, kept in git."""
    path: str
    y: str
    x: str = "step"


@dataclass(frozen=True)
class Kind:
    """One entry of dvc.yaml: the stages of one script with one name grammar."""
    name: str
    script: str                  # stages/<x>.py; its import closure becomes the stage's code deps
    args: str = ""               # the script's arguments
    launch: bool = False         # run by params `launch` (the multi-process launcher of a training stage)
    foreach: str = ""            # a params list: one stage per item, name@item
    matrix: tuple = ()           # ((key, params list), ...): one stage per combination, name@value-value
    params: tuple = ()           # params keys (whole sections, or dotted keys) the stage reads
    deps: tuple = ()             # its data inputs
    outs: tuple = ()             # paths (cached by DVC) or `InGit`s
    metrics: tuple = ()          # JSON files (or folders of them), kept in git
    plots: tuple = ()            # `Curve`s
    policy_run: str = ""         # the MLflow run of the trained policy a stage belongs to (core/tracking.py)
    comment: str = ""            # dvc.yaml's comment above the stage
    notes: dict = field(default_factory=dict)  # {a params key or dep: why}, dvc.yaml's comment beside it

    @property
    def cmd(self) -> str:
        return " ".join(filter(None, ["${launch}" if self.launch else "python", self.script, self.args]))

    @property
    def keys(self) -> tuple:
        """The names of one stage's values: ("item",) for foreach, the matrix's keys, () for a single stage."""
        return ("item",) if self.foreach else tuple(key for key, _ in self.matrix)

    def stage(self, *values) -> str:
        """The DVC name of this kind's stage for these values (in the order of `keys`): policy@dpo."""
        if len(values) != len(self.keys):
            raise ValueError(f"stage {self.name} takes {len(self.keys)} values ({', '.join(self.keys)}), not {values}")
        return f"{self.name}@{'-'.join(map(str, values))}" if values else self.name

    def expand(self, text: str, values: tuple) -> str:
        """`text` with this kind's `${item}` / `${item.<key>}` replaced by one stage's values."""
        for key, value in zip(self.keys, values):
            text = text.replace("${item}" if key == "item" else f"${{item.{key}}}", str(value))
        return text


# The LLM task's files that one stage writes and others read, named once: the stages use these names too.
PREPARED = "data/prepared"  # prepare's splits
SFT_TRAIN, SFT_EVAL = f"{PREPARED}/sft_train.jsonl", f"{PREPARED}/sft_eval.jsonl"
PROMPTS_TRAIN, PROMPTS_EVAL = f"{PREPARED}/prompts_train.jsonl", f"{PREPARED}/prompts_eval.jsonl"
PAIRS_TRAIN = f"{PREPARED}/pairs_train.jsonl"
TOKENIZER = "models/tokenizer"
SFT_MODEL = "models/sft"
SFT_SAMPLES_DIR = "data/sft_samples"
SFT_SAMPLES = f"{SFT_SAMPLES_DIR}/samples.jsonl"
EVAL_REFERENCE = "data/eval/reference.jsonl"  # the SFT draw every win rate is judged against
SFT_CURVE = "metrics/curves/sft.csv"

# The didactic stages' curves, kept in git: the stages write them, `PLOTS` draws them and the report reads them.
BANDIT_CURVE = "metrics/curves/bandit_{reward}_{sampling}.csv"  # per reward of bandit.rewards, offline|on_policy
BANDIT_REWARDS, BANDIT_SAMPLINGS = ("aligned", "misaligned"), ("offline", "on_policy")
BANDIT_REUSE = "metrics/curves/bandit_reuse.csv"  # reward against step per method and reuse T
BANDIT_REUSE_FINAL = "metrics/curves/bandit_reuse_final.csv"  # final reward against T
COVERAGE_CURVE = "metrics/curves/coverage_{problem}.csv"
COVERAGE_PROBLEMS = ("linear", "tabular")
COVERAGE_CLAIM6 = "metrics/curves/coverage_claim6.csv"
# Claim 6: the uncovered mass under DPO on the multi-armed bandit, by optimiser x parametrisation x start, one
# column group each in COVERAGE_CLAIM6; the first is Song et al.'s stated setting (docs/SETUPS.md, claim 6;
# reporting/claims.CLAIM6_SETTINGS reads each)
CLAIM6_CASES = (("sgd", "tabular", "uniform"), ("adam", "tabular", "uniform"), ("sgd", "features", "uniform"),
                ("adam", "features", "uniform"), ("sgd", "tabular", "random"), ("sgd", "tabular", "anti"))

# The report's artifacts, kept in git (report.md links the figures relative to itself)
REPORT = "metrics/report.md"
FIGURES = "metrics/figures"
CLAIMS = "metrics/claims.json"

LLM_INPUTS = (SFT_MODEL, "models/reward_model")
POLICY_RUN = ("model.max_prompt_tokens", "model.max_response_tokens", "generation", "policy", "algos.${item}")
EVALUATION = ("eval", "model.max_prompt_tokens", "model.max_response_tokens", "generation.batch_size")

KINDS = {kind.name: kind for kind in [
    Kind("prepare", "stages/prepare.py", params=("seed", "data", "model"), deps=("data/raw",),
         outs=(PREPARED,), metrics=("metrics/prepare.json",),
         notes={"data/raw": "the shipped file and yours (data.source): edit one and prepare reruns",
                "model": "a pretrained model's chat template renders the prompts"}),
    Kind("tokenizer", "stages/tokenizer.py", params=("seed", "tokenizer", "model"),
         deps=(SFT_TRAIN,), outs=(TOKENIZER,), metrics=("metrics/tokenizer.json",)),
    Kind("sft", "stages/sft.py", launch=True, policy_run="sft", params=("seed", "model", "sft"),
         deps=(TOKENIZER, SFT_TRAIN, SFT_EVAL),
         outs=(SFT_MODEL,), metrics=("metrics/sft.json",), plots=(Curve(SFT_CURVE, "train_loss"),)),
    Kind("sft_samples", "stages/sft_samples.py",
         params=("seed", "model.max_prompt_tokens", "model.max_response_tokens", "generation", "pairs"),
         deps=(SFT_MODEL, PROMPTS_TRAIN), outs=(SFT_SAMPLES_DIR,),
         metrics=("metrics/sft_samples.json",)),
    Kind("pairs", "stages/pairs.py",
         params=("seed", "gold", "pairs", "model.max_prompt_tokens", "model.max_response_tokens"),
         deps=(SFT_SAMPLES_DIR, PAIRS_TRAIN), outs=("data/pairs",),
         metrics=("metrics/pairs.json",)),
    Kind("reward_model", "stages/reward_model.py", launch=True, params=("seed", "reward_model"),
         deps=(SFT_MODEL, "data/pairs/pairs.jsonl"), outs=("models/reward_model",),
         metrics=("metrics/reward_model.json",), plots=(Curve("metrics/curves/reward_model.csv", "train_loss"),)),
    Kind("policy", "stages/policy.py", "${item}", launch=True, foreach=ALGORITHMS, params=("seed", *POLICY_RUN),
         policy_run="${item}",
         deps=(*LLM_INPUTS, "data/pairs/pairs.jsonl"), outs=("models/policy/${item}",),
         metrics=("metrics/policy/${item}.json",), plots=(Curve("metrics/curves/policy_${item}.csv", "loss"),)),
    Kind("evaluate_sft", "stages/evaluate.py", "sft", params=EVALUATION, policy_run="sft",
         deps=(*LLM_INPUTS, "data/pairs/gold.json", PROMPTS_EVAL, "data/pairs/pairs.jsonl"),
         outs=("data/eval/sft.jsonl", EVAL_REFERENCE), metrics=("metrics/eval/sft.json",)),
    Kind("evaluate", "stages/evaluate.py", "${item}", foreach=ALGORITHMS, params=EVALUATION, policy_run="${item}",
         deps=(*LLM_INPUTS, "models/policy/${item}", "data/pairs/gold.json", PROMPTS_EVAL,
               "data/pairs/pairs.jsonl", EVAL_REFERENCE),
         outs=("data/eval/${item}.jsonl",), metrics=("metrics/eval/${item}.json",)),
    Kind("seeds", "stages/seeds.py", "${item}", launch=True, foreach=ALGORITHMS,
         params=(*POLICY_RUN, "eval", "training_seeds.seeds"),
         deps=(*LLM_INPUTS, "data/pairs/pairs.jsonl", "data/pairs/gold.json", PROMPTS_EVAL,
               EVAL_REFERENCE),
         outs=("models/training_seeds/${item}", "data/training_seeds/${item}"),
         metrics=("metrics/training_seeds/${item}",), plots=(Curve("metrics/curves/training_seeds/${item}", "loss"),),
         comment="training seeds: every policy again with each seed of training_seeds.seeds, trained and\n"
                 "evaluated in one process (stages/seeds.py; none: empty folders)"),
    Kind("pairs_variant", "stages/pairs.py", "--variant ${item}", foreach=GOLD_REWARDS,
         params=("seed", "gold.skew_quantile", "gold.skew_keep", "pairs"), deps=(SFT_SAMPLES_DIR,),
         outs=("data/variants/${item}/pairs",), metrics=("metrics/variants/${item}/pairs.json",),
         comment="The LLM task again under other gold rewards (params `variants`): the same SFT samples relabelled,\n"
                 "a reward model and a few algorithms each, for claims 1, 3 and 4 across where the reward peaks."),
    Kind("reward_model_variant", "stages/reward_model.py", "--variant ${item}", launch=True, foreach=GOLD_REWARDS,
         params=("seed", "reward_model"), deps=(SFT_MODEL, "data/variants/${item}/pairs/pairs.jsonl"),
         outs=("models/variants/${item}/reward_model",), metrics=("metrics/variants/${item}/reward_model.json",),
         plots=(Curve("metrics/variants/${item}/curves/reward_model.csv", "train_loss"),)),
    Kind("policy_variant", "stages/policy.py", "${item.algo} --variant ${item.gold}", launch=True,
         matrix=(("gold", GOLD_REWARDS), ("algo", VARIANT_ALGORITHMS)),
         params=("seed", *POLICY_RUN[:-1], "algos.${item.algo}"), policy_run="${item.algo} on ${item.gold}",
         deps=(SFT_MODEL, "models/variants/${item.gold}/reward_model",
               "data/variants/${item.gold}/pairs/pairs.jsonl"),
         outs=("models/variants/${item.gold}/policy/${item.algo}",),
         metrics=("metrics/variants/${item.gold}/policy/${item.algo}.json",),
         plots=(Curve("metrics/variants/${item.gold}/curves/policy_${item.algo}.csv", "loss"),)),
    Kind("evaluate_variant_sft", "stages/evaluate.py", "sft --variant ${item}", foreach=GOLD_REWARDS,
         params=EVALUATION, policy_run="sft on ${item}",
         deps=(SFT_MODEL, "models/variants/${item}/reward_model", "data/variants/${item}/pairs/gold.json",
               "data/variants/${item}/pairs/pairs.jsonl", PROMPTS_EVAL,
               EVAL_REFERENCE),
         outs=("data/variants/${item}/eval/sft.jsonl",), metrics=("metrics/variants/${item}/eval/sft.json",)),
    Kind("evaluate_variant", "stages/evaluate.py", "${item.algo} --variant ${item.gold}",
         matrix=(("gold", GOLD_REWARDS), ("algo", VARIANT_ALGORITHMS)), params=EVALUATION,
         policy_run="${item.algo} on ${item.gold}",
         deps=(SFT_MODEL, "models/variants/${item.gold}/reward_model",
               "models/variants/${item.gold}/policy/${item.algo}", "data/variants/${item.gold}/pairs/gold.json",
               "data/variants/${item.gold}/pairs/pairs.jsonl", PROMPTS_EVAL,
               EVAL_REFERENCE),
         outs=("data/variants/${item.gold}/eval/${item.algo}.jsonl",),
         metrics=("metrics/variants/${item.gold}/eval/${item.algo}.json",)),
    Kind("bandit", "stages/bandit.py", params=("bandit",), metrics=("metrics/didactic/bandit.json",),
         outs=(*(InGit(BANDIT_CURVE.format(reward=reward, sampling=sampling))
                 for reward in BANDIT_REWARDS for sampling in BANDIT_SAMPLINGS),
               InGit(BANDIT_REUSE), InGit(BANDIT_REUSE_FINAL)),
         comment="Didactic problems: fast, several seeds each, independent of the LLM stages."),
    Kind("token_bandit", "stages/token_bandit.py", params=("token_bandit",),
         metrics=("metrics/didactic/token_bandit.json",)),
    Kind("coverage", "stages/coverage.py", params=("coverage",), metrics=("metrics/didactic/coverage.json",),
         outs=(*(InGit(COVERAGE_CURVE.format(problem=problem)) for problem in COVERAGE_PROBLEMS),
               InGit(COVERAGE_CLAIM6))),
    Kind("report", "stages/report.py", params=("seed", "algorithms", "variants", "training_seeds", "policy.lr"),
         deps=("metrics/prepare.json", "metrics/sft_samples.json", "metrics/sft.json", "metrics/pairs.json",
               "metrics/reward_model.json", *(f"metrics/{folder}" for folder in (
                   "policy", "eval", "curves", "didactic", "variants", "seeds", "sweep", "training_seeds")),
               "data/eval", "data/variants", "data/training_seeds", "data/pairs/gold.json"),
         outs=(InGit(FIGURES), InGit(REPORT)),
         metrics=("metrics/report_summary.json", CLAIMS),
         notes={"data/pairs/gold.json": "the gold reward that judges the reference draw (SFT's self win rate)",
                "policy.lr": "the learning rate of sweep rows without algos.<name>.lr"}),
]}

# The runs inside stage seeds@<algo>, one pair per seed of `training_seeds.seeds`: named like matrix stages. A
# seed's policy run takes its seed from its name, not from params `seed`.
SEED_RUNS = {kind.name: kind for kind in [
    Kind("policy_seed", "stages/seeds.py", matrix=(("item", ALGORITHMS), ("seed", "${training_seeds.seeds}")),
         params=POLICY_RUN, outs=("models/training_seeds/${item}/s${item.seed}",),
         metrics=("metrics/training_seeds/${item}/s${item.seed}/policy.json",),
         plots=(Curve("metrics/curves/training_seeds/${item}/policy_s${item.seed}.csv", "loss"),),
         policy_run="${item} seed ${item.seed}"),
    Kind("evaluate_seed", "stages/seeds.py", matrix=(("item", ALGORITHMS), ("seed", "${training_seeds.seeds}")),
         params=EVALUATION, outs=("data/training_seeds/${item}/s${item.seed}/eval.jsonl",),
         metrics=("metrics/training_seeds/${item}/s${item.seed}/eval.json",),
         policy_run="${item} seed ${item.seed}"),
]}


@dataclass(frozen=True)
class Plot:
    """A plot of `dvc plots show / diff`: columns `y` (a params list, or the column names) of a CSV against `x`."""
    name: str
    title: str
    csv: str
    y: str | tuple
    x: str = "step"
    note: str = ""


def _bandit_plot(reward: str, peak: str, sampling: str) -> Plot:
    return Plot(f"bandit_{reward}_{sampling}", f"Didactic bandit, {reward} reward (peak where pi_ref is {peak}), "
                f"{sampling.replace('_', '-')} (mean over seeds)", BANDIT_CURVE.format(reward=reward, sampling=sampling),
                "${bandit.methods}")


PLOTS_COMMENT = "`dvc plots show / diff`: the didactic curves, mean over seeds."
PLOTS = [
    _bandit_plot("misaligned", "unlikely", "on_policy"), _bandit_plot("misaligned", "unlikely", "offline"),
    _bandit_plot("aligned", "likely", "on_policy"), _bandit_plot("aligned", "likely", "offline"),
    Plot("bandit_reuse", "Claim 2: final reward against sample reuse T at fixed gradient steps (fresh samples = "
         "steps / T), misaligned reward (mean over seeds)", BANDIT_REUSE_FINAL,
         "${bandit.reuse.methods}", x="T", note="the methods of bandit.reuse.methods, whatever the preset runs"),
    Plot("coverage_linear", "Extrapolation with linear features (Song et al.)", COVERAGE_CURVE.format(problem="linear"),
         tuple(f"{method}_logp_{response}" for method in ("rlhf", "dpo", "hypo") for response in ("preferred", "best"))),
    Plot("coverage_tabular", "Mass on uncovered responses without function approximation",
         COVERAGE_CURVE.format(problem="tabular"),
         tuple(f"{method}_uncovered_mass" for method in ("rlhf", "dpo", "hypo"))),
    Plot("coverage_claim6", "Claim 6: mass on uncovered responses under DPO by optimiser/parametrisation/start "
         "(mean over seeds)", COVERAGE_CLAIM6, tuple(f"{'_'.join(case)}_mean" for case in CLAIM6_CASES)),
]


def kind_of(stage: str) -> tuple:
    """(the kind, its values) of a stage or seed run by name, as DVC and `Kind.stage` write it: policy@dpo ->
    (KINDS["policy"], ("dpo",)), policy_variant@mode_length-dpo -> (KINDS["policy_variant"], ("mode_length", "dpo"))."""
    name, _, rest = stage.partition("@")
    kind = KINDS.get(name) or SEED_RUNS.get(name)
    values = tuple(rest.split("-")) if rest else ()
    if kind is None or len(values) != len(kind.keys):
        raise KeyError(f"no stage {stage!r} in the pipeline (core/pipeline.py declares "
                       f"{', '.join(k.stage(*(f'<{key}>' for key in k.keys)) for k in [*KINDS.values(), *SEED_RUNS.values()])})")
    return kind, values


def params_of(stage: str) -> tuple:
    """The params keys a stage (or seed run) declares, its values filled in: policy@dpo -> (seed, ..., algos.dpo)."""
    kind, values = kind_of(stage)
    return tuple(kind.expand(key, values) for key in kind.params)


def metrics_of(stage: str) -> str:
    """The metrics file a stage (or seed run) writes: its first declared one, its values filled in."""
    kind, values = kind_of(stage)
    return kind.expand(kind.metrics[0], values)


def curve_of(stage: str) -> str:
    """The training curve a stage (or seed run) writes: its first declared plot, its values filled in."""
    kind, values = kind_of(stage)
    return kind.expand(kind.plots[0].path, values)


def output_of(stage: str) -> str:
    """The first output a stage (or seed run) declares, its values filled in: policy@dpo -> models/policy/dpo."""
    kind, values = kind_of(stage)
    out = kind.outs[0]
    return kind.expand(getattr(out, "path", out), values)


def algorithm_run_name(stage: str) -> str | None:
    """The MLflow run that gathers a trained policy's stages, or None for a stage of no policy (or no stage of the
    pipeline): policy@dpo, evaluate@dpo -> dpo; sft, evaluate@sft -> sft; policy_seed@dpo-1 -> dpo seed 1;
    policy_variant@mode_length-dpo -> dpo on mode_length; evaluate_variant_sft@mode_length -> sft on mode_length."""
    try:
        kind, values = kind_of(stage)
    except KeyError:
        return None
    return kind.expand(kind.policy_run, values) or None
