"""metrics/report.md, metrics/claims.json and the figures, built only from the files the stages wrote: read
(results.py), judged (claims.py), written as markdown (tables.py) and drawn (figures.py).

`build_report` reads every input once (`read_inputs`), judges the claims (`judge`), then writes the report's
sections top to bottom; a section draws each figure it links, where it links it (`Figures.draw`)."""
import json
from dataclasses import dataclass
from pathlib import Path

from pftlab.algorithms.taxonomy import table_markdown
from pftlab.core.io import atomic_write_json, atomic_write_text
from pftlab.core.paths import Task, seeds_stage
from pftlab.core.pipeline import (
    BANDIT_CURVE,
    BANDIT_REWARDS,
    BANDIT_SAMPLINGS,
    CLAIMS,
    COVERAGE_CLAIM6,
    COVERAGE_CURVE,
    COVERAGE_PROBLEMS,
    FIGURES,
    REPORT,
    SFT_CURVE,
    metrics_of,
)
from pftlab.reporting import claims as claims_lib
from pftlab.reporting.figures import (
    plot_bandit,
    plot_bandit_seeds,
    plot_claim6,
    plot_coverage,
    plot_frontier,
    plot_learning_curves,
    plot_losses,
    plot_reuse,
    plot_reward_vs_kl,
    plot_sft,
    plot_step_panels,
    plot_token_bandit,
)
from pftlab.reporting.results import llm_tasks, load_evals, read_curve, win_rates_per_prompt
from pftlab.reporting.seeds import SEEDS_DIR, load_seed_runs, pipeline_seed_runs
from pftlab.reporting.sweep import SWEEP_DIR
from pftlab.reporting.tables import (
    DPO_DIAGNOSIS,
    claims_markdown,
    dpo_diagnosis_text,
    eval_table,
    final_reward_table,
    frontier_table,
    matched_settings_table,
    rm_sentence,
    seeds_table,
    self_win_rate_sentence,
    sweep_section,
    uncovered_mass_section,
)


class Figures:
    """metrics/figures/<name>.png, each drawn once; report.md sits beside the folder and links figures/<name>.png."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def draw(self, name: str, alt: str, plot, *args) -> str:
        """Draw `plot(*args, path)` into the figure `name`; its markdown link."""
        plot(*args, self.folder / f"{name}.png")
        return f"![{alt}](figures/{name}.png)"


@dataclass
class Inputs:
    """What the report reads, once, from the files under `root`."""
    root: Path
    algorithms: list
    seed: int
    tasks: dict           # gold reward -> (Task, names): the main task first, then each variant's
    evals_by_task: dict   # gold reward -> {name: its evaluation}
    didactic: dict        # bandit, coverage, token_bandit -> its metrics, None where it did not run
    seed_runs: list       # training seeds (the pipeline's and collected ones, reporting/seeds.py)
    sweep: dict           # the sweep's summary; {} where none ran or it ran under other params
    other_sweep: bool     # a sweep ran, under other params or data than this run
    cells: list           # the sweep's cells where DPO and HyPO share (beta, lr)
    policy_curves: dict   # algorithm -> {training seed: its training curve}

    @property
    def gold_name(self) -> str:
        return next(iter(self.tasks))

    @property
    def main_task(self) -> Task:
        return self.tasks[self.gold_name][0]

    @property
    def evals(self) -> dict:
        return self.evals_by_task[self.gold_name]


def read_inputs(algorithms: list, variants: dict, seed: int, root: Path, training_seeds: dict, policy_lr: float,
                params_context: str | None) -> Inputs:
    tasks = llm_tasks(algorithms, variants, root)
    gold_name = next(iter(tasks))
    evals_by_task = load_evals(tasks, root)
    didactic = {}
    for name in ("bandit", "coverage", "token_bandit"):
        path = root / metrics_of(name)
        didactic[name] = json.loads(path.read_text()) if path.exists() else None
    seed_runs = pipeline_seed_runs(algorithms, training_seeds, gold_name, root)
    seed_runs += [r for r in load_seed_runs(root / SEEDS_DIR) if r["seed"] not in {s["seed"] for s in seed_runs}]
    sweep_summary = root / SWEEP_DIR / "summary.json"
    sweep = json.loads(sweep_summary.read_text()) if sweep_summary.exists() else {}
    other_sweep = bool(sweep) and params_context is not None and sweep.get("context") != params_context
    if other_sweep:  # e.g. the default task's committed sweep beside a run on your own data
        sweep = {}
    evals = evals_by_task[gold_name]
    cells = claims_lib.matched_cells(sweep, policy_lr) if "dpo" in evals and "hypo" in evals else []
    # every policy's training curves, keyed by training seed: the DPO diagnosis and the learning curves share them
    main_task = tasks[gold_name][0]
    policy_curves = {a: {seed: read_curve(root / main_task.curve("policy", a))} for a in algorithms}
    for run in seed_runs:
        if run["experiment"] == "training_seeds":
            for a in run["tasks"][gold_name]:
                policy_curves.setdefault(a, {})[run["seed"]] = read_curve(root / Task(seed=run["seed"]).curve("policy", a))
    return Inputs(root, algorithms, seed, tasks, evals_by_task, didactic, seed_runs, sweep, other_sweep, cells,
                  policy_curves)


def judge(r: Inputs) -> tuple[dict, str]:
    """Every claim's checks, and what the LLM task's intervals vary over."""
    llm_parts, over = claims_lib.llm_claim_parts(r.tasks, r.evals_by_task, r.seed, r.seed_runs, r.root)
    if "dpo" in r.evals:  # claim 3's likelihood check: over DPO's training seeds where they exist
        dpo_runs = [s for s in r.seed_runs if "dpo" in s["tasks"].get(r.gold_name, {})]
        dpo_evals = [r.evals["dpo"]] + [s["tasks"][r.gold_name]["dpo"] for s in dpo_runs]
        llm_parts.append((f"synthetic LLM task ({r.gold_name})",
                          {"3": claims_lib.dpo_likelihood_check(dpo_evals, [r.seed] + [s["seed"] for s in dpo_runs])}))
    llm_parts.append((f"synthetic LLM task ({r.gold_name}), hyperparameter sweep",
                      claims_lib.matched_settings_claims(r.cells)))
    d = r.didactic
    return claims_lib.all_claims(d["bandit"], d["coverage"], d["token_bandit"], llm_parts), over


def build_report(algorithms: list, variants: dict = None, seed: int = 0, root=".", training_seeds: dict = None,
                 policy_lr: float = None, params_context: str = None) -> str:
    """metrics/report.md, metrics/claims.json and the figures, from the files under `root`; the sweep summary only
    where it ran under `params_context` (`reporting.sweep.context_of` of this run's params; None: not checked)."""
    root = Path(root)
    r = read_inputs(algorithms, variants or {}, seed, root, training_seeds or {}, policy_lr, params_context)
    claims, over = judge(r)
    atomic_write_json(root / CLAIMS, claims)
    figures = Figures(root / FIGURES)
    lines = claims_section(claims, over) + llm_section(r, figures, policy_lr) + algorithms_section(r, figures)
    lines += didactic_sections(r, figures) + stage_times_section(r)
    text = "\n".join(lines) + "\n"
    atomic_write_text(root / REPORT, text)
    return text


def claims_section(claims: dict, over: str) -> list:
    lines = ["# pftlab report", "", "## The papers' claims", "",
             "Verdicts are computed by `src/pftlab/reporting/claims.py` from the metrics of this run: *reproduced* when "
             "the 95% interval of the difference lies on the claimed side of zero, *not reproduced* when it lies on the "
             "other side, *inconclusive* otherwise. Every interval and every ± in this report is the same 95% Student-t "
             "interval of a mean (`src/pftlab/core/stats.py`); what it varies over is named with it. In the didactic "
             "settings it is over seeds (independent training runs); in the LLM tasks it is over "
             f"{over} (over prompts: the sampling noise of one training run; over training seeds: the spread between "
             "runs, params `training_seeds`, or whole runs collected with `python -m pftlab.reporting.seeds`, see README).", ""]
    return lines + claims_markdown(claims)


def llm_section(r: Inputs, figures: Figures, policy_lr: float | None) -> list:
    """The LLM task: evaluations per gold reward, the sweep, DPO against HyPO, training seeds, offline DPO's steps."""
    evals, gold_name = r.evals, r.gold_name
    judge_words = ("Human-labelled pairs have no gold reward: the reward model judges (its score stands in the "
                   "gold reward column). " if gold_name == "reward_model" else f"Gold reward: `{gold_name}`. ")
    lines = ["", "## The LLM task", "", judge_words +
             "Evaluation on held-out prompts; KL and win rate are against the SFT policy. The gold reward's ± is the "
             "half-width of its 95% interval over held-out prompts (each prompt's mean over its samples): the sampling "
             "noise of one training run, not the spread between training runs.", "",
             ] + eval_table(evals)
    if gold_name != "reward_model":  # with a gold reward: the win rate's noise floor, from the saved samples
        lines += ["", self_win_rate_sentence(win_rates_per_prompt(r.root, r.main_task, "sft"))]
    lines += ["", rm_sentence(r.root / r.main_task.metrics("reward_model"))]
    for reward, (task, _) in list(r.tasks.items())[1:]:
        lines += ["", f"### The same task under the `{reward}` gold reward", "",
                  "The same SFT samples relabelled; a reward model and policies trained on those labels.", ""]
        lines += eval_table(r.evals_by_task[reward])
        lines += ["", rm_sentence(r.root / task.metrics("reward_model"))]
    if r.sweep:
        lines += [""] + sweep_section(r.sweep, policy_lr)
    elif r.other_sweep:
        lines += ["", "The hyperparameter sweep in `metrics/sweep/summary.json` ran under other params or data than "
                  "this run, so it is not shown and decides nothing here (`python -m pftlab.reporting.sweep` runs one "
                  "for these)."]
    if r.cells:  # claim 8 as Song et al. ran it, and the frontier from every DPO and HyPO run at hand
        points = {n: [(s["kl_k1"], s["gold_reward"], "sweep") for row in r.sweep["algorithms"][n]["rows"]
                      if not row.get("earlier") for s in claims_lib.seed_scores(row).values()]
                  + [(e["kl_k1"], e["gold_reward"], "seed") for e in
                     [evals[n]] + [s["tasks"][gold_name][n] for s in r.seed_runs if n in s["tasks"].get(gold_name, {})]]
                  for n in ("dpo", "hypo")}
        lines += [""] + matched_settings_table(r.cells) + [""] + frontier_table(points)
        lines += ["", figures.draw("dpo_hypo_frontier", "DPO and HyPO: gold reward against KL", plot_frontier, points)]
    if r.seed_runs:
        lines += ["", "### Across training seeds", "",
                  "Each seed's held-out mean (the same SFT model, pairs and reward model; only the policy's training "
                  "seed differs); the 95% interval is over training seeds (the spread between runs).", ""]
        lines += seeds_table(r.evals_by_task, r.seed, r.seed_runs)
    if "dpo" in evals:
        dpo_curves = {f"seed {s}": rows for s, rows in r.policy_curves["dpo"].items()}
        dpo_by_seed = {f"seed {r.seed}": evals["dpo"]} | {f"seed {s['seed']}": s["tasks"][gold_name]["dpo"]
                                                          for s in r.seed_runs if "dpo" in s["tasks"].get(gold_name, {})}
        lines += [""] + dpo_diagnosis_text(dpo_curves, evals["sft"], evals["dpo"], dpo_by_seed)
        lines += [figures.draw("dpo_diagnosis", "offline DPO", plot_step_panels, dpo_curves, DPO_DIAGNOSIS), ""]
    return lines


def algorithms_section(r: Inputs, figures: Figures) -> list:
    """The taxonomy, then the LLM task's figures: every policy's curves over its training seeds, reward vs KL, SFT."""
    curves = {a: list(r.policy_curves[a].values()) for a in r.algorithms}
    return ["", "## Algorithms", "", table_markdown(), "", "## Figures", "",
            figures.draw("learning_curves", "learning curves", plot_learning_curves, curves), "",
            figures.draw("losses", "losses, one panel per algorithm", plot_losses, curves), "",
            figures.draw("reward_vs_kl", "gold reward vs KL", plot_reward_vs_kl, r.evals), "",
            figures.draw("sft_loss", "SFT loss", plot_sft, read_curve(r.root / SFT_CURVE)), ""]


def didactic_sections(r: Inputs, figures: Figures) -> list:
    """The bandit (Tajwar et al.), the token-level bandit and the coverage problems (Song et al.), where they ran."""
    bandit, coverage, token_bandit = r.didactic["bandit"], r.didactic["coverage"], r.didactic["token_bandit"]
    lines = []
    if bandit:
        curves = {(rw, s): read_curve(r.root / BANDIT_CURVE.format(reward=rw, sampling=s)) for rw in BANDIT_REWARDS
                  for s in BANDIT_SAMPLINGS}
        methods = list(dict.fromkeys(k.split("/")[1] for k in bandit["runs"]))
        lines += ["### Didactic bandit (Tajwar et al.)", ""] + final_reward_table(bandit["runs"], "reward / method / sampling")
        lines += ["", f"Final eval reward: the mean over the last 5 steps of the exact E_pi[r] on the eval contexts; "
                  f"{len(bandit['seeds'])} seeds per cell (docs/SETUPS.md: the authors' settings).", "",
                  figures.draw("bandit", "bandit", plot_bandit, curves, methods), "",
                  figures.draw("bandit_seeds", "every seed", plot_bandit_seeds, bandit["runs"]), "",
                  figures.draw("bandit_reuse", "sample reuse", plot_reuse, bandit), ""]
    if token_bandit:
        lines += ["### Token-level bandit (the LLM trainer on a 3-layer GPT)", ""]
        lines += final_reward_table(token_bandit["runs"], "reward / algorithm") + [""]
        lines += [f"{len(token_bandit['seeds'])} seeds.", "",
                  figures.draw("token_bandit", "token-level bandit", plot_token_bandit, token_bandit["runs"]), ""]
    if coverage:
        curves = {k: read_curve(r.root / COVERAGE_CURVE.format(problem=k)) for k in COVERAGE_PROBLEMS}
        lines += ["### Coverage problems (Song et al.)", ""]
        lines += [f"Mean over {len(coverage['seeds'])} seeds, shaded: its 95% t-interval over seeds:", "",
                  figures.draw("coverage", "coverage", plot_coverage, curves), ""]
        if "uncovered_mass_by_case" in coverage:
            lines += uncovered_mass_section(coverage["uncovered_mass_by_case"], coverage.get("claim6_steps"))
            claim6_curve = read_curve(r.root / COVERAGE_CLAIM6)
            if claim6_curve:
                lines += [figures.draw("coverage_claim6", "claim 6 by setting", plot_claim6, claim6_curve), ""]
    return lines


def stage_times_section(r: Inputs) -> list:
    """Each stage's start-up and work seconds, from its metrics file."""
    lines = ["## Stage times (seconds, wall clock, this machine)", "",
             "*start-up*: from the stage's process start to its first line of work (Python and its imports); "
             "*work*: the stage itself. What DVC adds around them (hashing, `dvc.lock`) is in neither: "
             "`python bench/repro_timeline.py` runs `dvc repro` and measures all three.", "",
             "| stage | start-up | work |", "|---|---|---|"]
    root, gold_name = r.root, r.gold_name
    stage_files = [(s, root / metrics_of(s)) for s in ("prepare", "tokenizer", "sft", "sft_samples")]
    for task, task_names in r.tasks.values():
        stage_files += [(task.stage(kind), root / task.metrics(kind)) for kind in ("pairs", "reward_model")]
        stage_files += [(task.stage("policy", a), root / task.metrics("policy", a)) for a in task_names if a != "sft"]
        stage_files += [(task.stage("evaluate", n), root / task.metrics("evaluate", n)) for n in task_names]
    pipeline_seeds = [run for run in r.seed_runs if run["experiment"] == "training_seeds"]
    for n in dict.fromkeys(n for run in pipeline_seeds for n in run["tasks"][gold_name]):
        # stage seeds@<n>: its runs in the order it runs them, in one process (start-up on the first)
        seed_tasks = [Task(seed=run["seed"]) for run in pipeline_seeds if n in run["tasks"][gold_name]]
        stage_files += [(f"{seeds_stage(n)}: {task.stage(kind, n)}", root / task.metrics(kind, n))
                        for kind in ("policy", "evaluate") for task in seed_tasks]
    stage_files += [(s, root / metrics_of(s)) for s in ("bandit", "token_bandit", "coverage") if (root / metrics_of(s)).exists()]
    total = startup_total = 0.0
    for stage, path in stage_files:
        times = json.loads(path.read_text())
        seconds, startup = times.get("seconds", float("nan")), times.get("startup_seconds", float("nan"))
        total, startup_total = total + seconds, startup_total + startup
        lines.append(f"| {stage} | {startup:.1f} | {seconds:.1f} |")
    lines.append(f"| total (without report) | {startup_total:.1f} | {total:.1f} |")
    return lines
