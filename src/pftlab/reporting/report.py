"""metrics/report.md, metrics/claims.json and the figures, built only from the files the stages wrote: read
(results.py), judged (claims.py), written as markdown (tables.py) and drawn (figures.py)."""
import json
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


def build_report(algorithms: list, variants: dict = None, seed: int = 0, root=".", training_seeds: dict = None,
                 policy_lr: float = None, params_context: str = None) -> str:
    """metrics/report.md, metrics/claims.json and the figures, from the files under `root`; the sweep summary only
    where it ran under `params_context` (`reporting.sweep.context_of` of this run's params; None: not checked)."""
    root = Path(root)
    figures = root / FIGURES  # report.md links its figures relative to itself, as figures/<name>.png
    figures.mkdir(parents=True, exist_ok=True)
    tasks = llm_tasks(algorithms, variants or {}, root)
    (gold_name, (main_task, _)), *variant_tasks = tasks.items()
    evals_by_task = load_evals(tasks, root)
    evals = evals_by_task[gold_name]
    didactic = {}
    for name in ("bandit", "coverage", "token_bandit"):
        path = root / metrics_of(name)
        didactic[name] = json.loads(path.read_text()) if path.exists() else None
    bandit, coverage, token_bandit = didactic["bandit"], didactic["coverage"], didactic["token_bandit"]
    seed_runs = pipeline_seed_runs(algorithms, training_seeds or {}, gold_name, root)
    seed_runs += [r for r in load_seed_runs(root / SEEDS_DIR) if r["seed"] not in {s["seed"] for s in seed_runs}]
    llm_parts, over = claims_lib.llm_claim_parts(tasks, evals_by_task, seed, seed_runs, root)
    if "dpo" in evals:  # claim 3's likelihood check: over DPO's training seeds where they exist
        dpo_runs = [r for r in seed_runs if "dpo" in r["tasks"].get(gold_name, {})]
        dpo_evals = [evals["dpo"]] + [r["tasks"][gold_name]["dpo"] for r in dpo_runs]
        llm_parts.append((f"synthetic LLM task ({gold_name})",
                          {"3": claims_lib.dpo_likelihood_check(dpo_evals, [seed] + [r["seed"] for r in dpo_runs])}))
    sweep_summary = root / SWEEP_DIR / "summary.json"
    sweep = json.loads(sweep_summary.read_text()) if sweep_summary.exists() else {}
    other_sweep = bool(sweep) and params_context is not None and sweep.get("context") != params_context
    if other_sweep:  # e.g. the default task's committed sweep beside a run on your own data
        sweep = {}
    cells = claims_lib.matched_cells(sweep, policy_lr) if "dpo" in evals and "hypo" in evals else []
    llm_parts.append((f"synthetic LLM task ({gold_name}), hyperparameter sweep", claims_lib.matched_settings_claims(cells)))
    claims = claims_lib.all_claims(bandit, coverage, token_bandit, llm_parts)
    atomic_write_json(root / CLAIMS, claims)
    lines = ["# pftlab report", "", "## The papers' claims", "",
             "Verdicts are computed by `src/pftlab/reporting/claims.py` from the metrics of this run: *reproduced* when "
             "the 95% interval of the difference lies on the claimed side of zero, *not reproduced* when it lies on the "
             "other side, *inconclusive* otherwise. Every interval and every ± in this report is the same 95% Student-t "
             "interval of a mean (`src/pftlab/core/stats.py`); what it varies over is named with it. In the didactic "
             "settings it is over seeds (independent training runs); in the LLM tasks it is over "
             f"{over} (over prompts: the sampling noise of one training run; over training seeds: the spread between "
             "runs, params `training_seeds`, or whole runs collected with `python -m pftlab.reporting.seeds`, see README).", ""]
    lines += claims_markdown(claims)
    judge = ("Human-labelled pairs have no gold reward: the reward model judges (its score stands in the "
             "gold reward column). " if gold_name == "reward_model" else f"Gold reward: `{gold_name}`. ")
    lines += ["", "## The LLM task", "", judge +
              "Evaluation on held-out prompts; KL and win rate are against the SFT policy. The gold reward's ± is the "
              "half-width of its 95% interval over held-out prompts (each prompt's mean over its samples): the sampling "
              "noise of one training run, not the spread between training runs.", "",
             ] + eval_table(evals)
    if gold_name != "reward_model":  # with a gold reward: the win rate's noise floor, from the saved samples
        lines += ["", self_win_rate_sentence(win_rates_per_prompt(root, main_task, "sft"))]
    lines += ["", rm_sentence(root / main_task.metrics("reward_model"))]
    for reward, (task, _) in variant_tasks:
        lines += ["", f"### The same task under the `{reward}` gold reward", "",
                  "The same SFT samples relabelled; a reward model and policies trained on those labels.", ""]
        lines += eval_table(evals_by_task[reward])
        lines += ["", rm_sentence(root / task.metrics("reward_model"))]
    if sweep:
        lines += [""] + sweep_section(sweep, policy_lr)
    elif other_sweep:
        lines += ["", "The hyperparameter sweep in `metrics/sweep/summary.json` ran under other params or data than "
                  "this run, so it is not shown and decides nothing here (`python -m pftlab.reporting.sweep` runs one "
                  "for these)."]
    if cells:  # claim 8 as Song et al. ran it, and the frontier from every DPO and HyPO run at hand
        points = {n: [(s["kl_k1"], s["gold_reward"], "sweep") for r in sweep["algorithms"][n]["rows"] if not r.get("earlier")
                      for s in claims_lib.seed_scores(r).values()]
                  + [(e["kl_k1"], e["gold_reward"], "seed") for e in
                     [evals[n]] + [r["tasks"][gold_name][n] for r in seed_runs if n in r["tasks"].get(gold_name, {})]]
                  for n in ("dpo", "hypo")}
        plot_frontier(points, figures / "dpo_hypo_frontier.png")
        lines += [""] + matched_settings_table(cells) + [""] + frontier_table(points)
        lines += ["", "![DPO and HyPO: gold reward against KL](figures/dpo_hypo_frontier.png)"]
    if seed_runs:
        lines += ["", "### Across training seeds", "",
                  "Each seed's held-out mean (the same SFT model, pairs and reward model; only the policy's training "
                  "seed differs); the 95% interval is over training seeds (the spread between runs).", ""]
        lines += seeds_table(evals_by_task, seed, seed_runs)
    # every policy's training curves, keyed by training seed: the DPO diagnosis and the learning curves share them
    policy_curves = {a: {seed: read_curve(root / main_task.curve("policy", a))} for a in algorithms}
    for run in seed_runs:
        if run["experiment"] == "training_seeds":
            for a in run["tasks"][gold_name]:
                policy_curves.setdefault(a, {})[run["seed"]] = read_curve(root / Task(seed=run["seed"]).curve("policy", a))
    if "dpo" in evals:
        dpo_curves = {f"seed {s}": rows for s, rows in policy_curves["dpo"].items()}
        plot_step_panels(dpo_curves, DPO_DIAGNOSIS, figures / "dpo_diagnosis.png")
        dpo_by_seed = {f"seed {seed}": evals["dpo"]} | {f"seed {r['seed']}": r["tasks"][gold_name]["dpo"] for r in seed_runs
                                                        if "dpo" in r["tasks"].get(gold_name, {})}
        lines += [""] + dpo_diagnosis_text(dpo_curves, evals["sft"], evals["dpo"], dpo_by_seed)
    lines += ["", "## Algorithms", "", table_markdown(), "",
              "## Figures", "", "![learning curves](figures/learning_curves.png)", "",
              "![losses, one panel per algorithm](figures/losses.png)", "",
              "![gold reward vs KL](figures/reward_vs_kl.png)", "", "![SFT loss](figures/sft_loss.png)", ""]
    if bandit:
        plot_bandit({(r, s): read_curve(root / BANDIT_CURVE.format(reward=r, sampling=s)) for r in BANDIT_REWARDS
                     for s in BANDIT_SAMPLINGS}, list(dict.fromkeys(k.split("/")[1] for k in bandit["runs"])),
                    figures / "bandit.png")
        plot_bandit_seeds(bandit["runs"], figures / "bandit_seeds.png")
        plot_reuse(bandit, figures / "bandit_reuse.png")
        lines += ["### Didactic bandit (Tajwar et al.)", ""] + final_reward_table(bandit["runs"], "reward / method / sampling")
        lines += ["", f"Final eval reward: the mean over the last 5 steps of the exact E_pi[r] on the eval contexts; "
                  f"{len(bandit['seeds'])} seeds per cell (docs/SETUPS.md: the authors' settings).", "",
                  "![bandit](figures/bandit.png)", "", "![every seed](figures/bandit_seeds.png)", "",
                  "![sample reuse](figures/bandit_reuse.png)", ""]
    if token_bandit:
        lines += ["### Token-level bandit (the LLM trainer on a 3-layer GPT)", ""]
        lines += final_reward_table(token_bandit["runs"], "reward / algorithm") + [""]
        plot_token_bandit(token_bandit["runs"], figures / "token_bandit.png")
        lines += [f"{len(token_bandit['seeds'])} seeds.", "", "![token-level bandit](figures/token_bandit.png)", ""]
    if coverage:
        lines += ["### Coverage problems (Song et al.)", ""]
        plot_coverage({k: read_curve(root / COVERAGE_CURVE.format(problem=k)) for k in COVERAGE_PROBLEMS},
                      figures / "coverage.png")
        lines += [f"Mean over {len(coverage['seeds'])} seeds, shaded: its 95% t-interval over seeds:", "",
                  "![coverage](figures/coverage.png)", ""]
        if "uncovered_mass_by_case" in coverage:
            lines += uncovered_mass_section(coverage["uncovered_mass_by_case"], coverage.get("claim6_steps"))
            claim6_curve = read_curve(root / COVERAGE_CLAIM6)
            if claim6_curve:
                plot_claim6(claim6_curve, figures / "coverage_claim6.png")
                lines += ["![claim 6 by setting](figures/coverage_claim6.png)", ""]
    lines += ["## Stage times (seconds, wall clock, this machine)", "",
              "*start-up*: from the stage's process start to its first line of work (Python and its imports); "
              "*work*: the stage itself. What DVC adds around them (hashing, `dvc.lock`) is in neither: "
              "`python bench/repro_timeline.py` runs `dvc repro` and measures all three.", "",
              "| stage | start-up | work |", "|---|---|---|"]
    stage_files = [(s, root / metrics_of(s)) for s in ("prepare", "tokenizer", "sft", "sft_samples")]
    for _, (task, task_names) in tasks.items():
        stage_files += [(task.stage(kind), root / task.metrics(kind)) for kind in ("pairs", "reward_model")]
        stage_files += [(task.stage("policy", a), root / task.metrics("policy", a)) for a in task_names if a != "sft"]
        stage_files += [(task.stage("evaluate", n), root / task.metrics("evaluate", n)) for n in task_names]
    pipeline_seeds = [run for run in seed_runs if run["experiment"] == "training_seeds"]
    for n in dict.fromkeys(n for run in pipeline_seeds for n in run["tasks"][gold_name]):
        # stage seeds@<n>: its runs in the order it runs them, in one process (start-up on the first)
        tasks = [Task(seed=run["seed"]) for run in pipeline_seeds if n in run["tasks"][gold_name]]
        stage_files += [(f"{seeds_stage(n)}: {task.stage(kind, n)}", root / task.metrics(kind, n))
                        for kind in ("policy", "evaluate") for task in tasks]
    stage_files += [(s, root / metrics_of(s)) for s in ("bandit", "token_bandit", "coverage") if (root / metrics_of(s)).exists()]
    total = startup_total = 0.0
    for stage, path in stage_files:
        times = json.loads(path.read_text())
        seconds, startup = times.get("seconds", float("nan")), times.get("startup_seconds", float("nan"))
        total, startup_total = total + seconds, startup_total + startup
        lines.append(f"| {stage} | {startup:.1f} | {seconds:.1f} |")
    lines.append(f"| total (without report) | {startup_total:.1f} | {total:.1f} |")
    plot_learning_curves({a: list(policy_curves[a].values()) for a in algorithms},
                         figures / "learning_curves.png", figures / "losses.png")
    plot_reward_vs_kl(evals, figures / "reward_vs_kl.png")
    plot_sft(read_curve(root / SFT_CURVE), figures / "sft_loss.png")
    text = "\n".join(lines) + "\n"
    atomic_write_text(root / REPORT, text)
    return text
