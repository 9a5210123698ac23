"""metrics/report.md and its figures, built only from the metrics files the stages wrote."""
import csv
import json
import statistics
from pathlib import Path

import matplotlib

from pftlab.algorithms.table import table_markdown
from pftlab.core.io import atomic_write_json, atomic_write_text, read_jsonl
from pftlab.core.paths import Task
from pftlab.core.stats import mean_ci
from pftlab.reporting import claims as claims_lib
from pftlab.reporting.seeds import load_seed_runs

matplotlib.use("Agg")  # files only, no display: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

EVAL_COLUMNS = [("gold_reward", "gold reward"), ("proxy_reward", "proxy reward"), ("kl_k1", "KL k1"),
                ("kl_k3", "KL k3"), ("win_rate_vs_sft", "win rate vs SFT"), ("response_length", "length"),
                ("eos_fraction", "ends with EOS")]


def read_curve(path) -> list:
    if not Path(path).exists():
        return []
    with open(path) as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _save(fig, path):
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def plot_learning_curves(curves: dict, path):
    panels = [("loss", "loss"), ("proxy_reward", "proxy reward of fresh samples"), ("margin", "DPO implicit reward margin"),
              ("kl_k1", "KL(pi || ref) of fresh samples (k1)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for name, rows in curves.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient step")
        if ax.lines:
            ax.legend(fontsize=8)
    _save(fig, path)


def plot_reward_vs_kl(evals: dict, path):
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, m in evals.items():
        ax.errorbar(m["kl_k1"], m["gold_reward"], yerr=m["gold_reward_ci95"], fmt="o", capsize=3, label=name)
    ax.set_xlabel("reverse KL to SFT (k1, per sequence)")
    ax.set_ylabel("gold reward (mean, 95% CI over held-out prompts)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_sft(rows, path):
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot([r["step"] for r in rows], [r["train_loss"] for r in rows], label="train")
    ev = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    ax.plot(*zip(*ev), "o-", label="held-out")
    ax.set_xlabel("step")
    ax.set_ylabel("loss per reply token")
    ax.legend()
    _save(fig, path)


def plot_bandit(curves: dict, methods: list, path):
    """Eval reward against gradient steps, per reward (columns) and sampling (rows): the mean over seeds,
    and shaded, the seeds' min to max."""
    keys = sorted({k[0] for k in curves}, reverse=True), ("on_policy", "offline")
    fig, axes = plt.subplots(2, len(keys[0]), figsize=(5.5 * len(keys[0]), 7), squeeze=False)
    for col, reward in enumerate(keys[0]):
        for row, sampling in enumerate(keys[1]):
            ax, rows = axes[row, col], curves[(reward, sampling)]
            for i, method in enumerate(methods):
                if rows and method in rows[0]:
                    steps = [r["step"] for r in rows]
                    ax.plot(steps, [r[method] for r in rows], color=plt.cm.tab10(i), label=method)
                    ax.fill_between(steps, [r[f"{method}_min"] for r in rows], [r[f"{method}_max"] for r in rows],
                                    color=plt.cm.tab10(i), alpha=0.12, linewidth=0)
            ax.set_title(f"{reward} reward, {sampling.replace('_', '-')}", fontsize=10)
            ax.set_xlabel("gradient step")
            ax.set_ylabel("eval reward (mean; band: min-max over seeds)")
            ax.set_ylim(0, 1.02)
    axes[0, -1].legend(fontsize=8)
    _save(fig, path)


def plot_bandit_seeds(runs: dict, path):
    """Every seed's final reward per method, offline (open) and on-policy (filled), per reward."""
    rewards = sorted({k.split("/")[0] for k in runs if not k.split("/")[2].startswith("reuse_")}, reverse=True)
    methods = list(dict.fromkeys(k.split("/")[1] for k in runs if k.split("/")[2] == "offline"))
    fig, axes = plt.subplots(1, len(rewards), figsize=(5.5 * len(rewards), 3.6), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for i, method in enumerate(methods):
            for shift, sampling, face in ((-0.15, "offline", "none"), (0.15, "on_policy", plt.cm.tab10(i))):
                values = runs[f"{reward}/{method}/{sampling}"]["final_reward"]
                ax.scatter([i + shift] * len(values), values, s=14, facecolors=face, edgecolors=plt.cm.tab10(i),
                           label=sampling.replace("_", "-") if i == 0 else None)
        ax.set_xticks(range(len(methods)), methods, fontsize=8)
        ax.set_ylabel("final eval reward, one dot per seed")
        ax.set_title(f"{reward} reward (open: offline, filled: on-policy)", fontsize=10)
        ax.set_ylim(-0.02, 1.02)
    _save(fig, path)


def plot_reuse(bandit: dict, path):
    runs = bandit["runs"]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    methods = sorted({k.split("/")[1] for k in runs if "/reuse_" in k})
    for method in methods:
        ts = sorted({int(k.split("_")[-1]) for k in runs if k.startswith(f"misaligned/{method}/reuse_")})
        stats = [mean_ci(runs[f"misaligned/{method}/reuse_{t}"]["final_reward"]) for t in ts]
        ax.errorbar(ts, [m for m, _ in stats], yerr=[half for _, half in stats], fmt="o-", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_xlabel("gradient steps per collection T (samples and steps fixed)")
    ax.set_ylabel("final eval reward, misaligned (95% CI over seeds)")
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_coverage(curves: dict, path):
    panels = [("linear", "logp_preferred", "linear: mean log pi of preferred responses"),
              ("linear", "logp_best", "linear: log pi of the unseen best response"),
              ("tabular", "uncovered_mass", "tabular: mass on uncovered responses"), ("tabular", "kl", "tabular: KL(pi || pi_ref)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (kind, q, title) in zip(axes, panels):
        rows = curves[kind]
        for method in ("rlhf", "dpo", "hypo"):
            if f"{method}_{q}" in rows[0]:
                ax.plot([r["step"] for r in rows], [r[f"{method}_{q}"] for r in rows], label=method)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    _save(fig, path)


def final_reward_table(runs: dict, title: str) -> list:
    """Rows `reward/method[/sampling]` -> final eval reward, mean [95% CI] over seeds."""
    lines = [f"| {title} | final eval reward, mean [95% CI over seeds] | median | min - max over seeds | seeds |",
             "|---|---|---|---|---|"]
    for key, v in runs.items():
        m, half = mean_ci(v["final_reward"])
        values = sorted(v["final_reward"])
        lines.append(f"| {key} | {m:.3f} [{m - half:.3f}, {m + half:.3f}] | {statistics.median(values):.3f} | "
                     f"{values[0]:.3f} - {values[-1]:.3f} | {len(values)} |")
    return lines


def claims_markdown(claims: dict) -> list:
    lines = ["| claim | verdict | checks: setting, comparison, mean [95% CI] over n, verdict |", "|---|---|---|"]
    for cid, c in claims.items():
        checks = "<br>".join(f"{x['setting']}: {x['comparison']} ({x['quantity']}): {x['mean']:.3g} "
                             f"[{x['ci95'][0]:.3g}, {x['ci95'][1]:.3g}] over {x['n']} {x['over']}: *{x['verdict']}*"
                             for x in c["checks"]) or "no setting measures it in this run"
        lines.append(f"| {cid}. {c['claim']} | **{c['verdict']}** | {checks} |")
    return lines


def llm_tasks(algorithms: list, variants: dict, root: Path) -> dict:
    """{gold reward: (Task, policy names)} of the main task and every variant that has results."""
    main_reward = json.loads((root / Task().metrics("pairs")).read_text())["gold_reward"]
    tasks = {main_reward: (Task(), ["sft"] + list(algorithms))}
    for reward in variants.get("rewards", []):
        if reward != main_reward:
            tasks[reward] = (Task(reward), ["sft"] + list(variants["algorithms"]))
    return tasks


def load_evals(tasks: dict, root: Path) -> dict:
    """{gold reward: {policy: its metrics/[variants/<gold>/]eval/<policy>.json}}, read once."""
    return {reward: {n: json.loads((root / task.metrics("eval", n)).read_text()) for n in names}
            for reward, (task, names) in tasks.items()}


def llm_claim_parts(tasks: dict, evals: dict, seed: int, seed_runs: list, root: Path) -> tuple:
    """The LLM tasks' claims, over training seeds when other seeds were collected, else over held-out prompts."""
    gold, kl = {}, {}
    tasks = {r: t for r, t in tasks.items() if r in claims_lib.PEAK_WHERE_SFT_IS_LIKELY}  # a gold reward to judge by
    if seed_runs:
        seeds = [seed] + [r["seed"] for r in seed_runs]
        over = f"training seeds ({', '.join(map(str, seeds))})"
        for reward, (_task, names) in tasks.items():
            for n in names:
                runs = [r["tasks"].get(reward, {}).get(n) for r in seed_runs]
                if all(runs):
                    own = evals[reward][n]
                    gold.setdefault(reward, {})[n] = [own["gold_reward"]] + [r["gold_reward"] for r in runs]
                    kl.setdefault(reward, {})[n] = [own["kl_k1"]] + [r["kl_k1"] for r in runs]
    else:
        over = "held-out prompts, one training seed"
        for reward, (task, names) in tasks.items():
            for n in names:
                rows = read_jsonl(root / task.eval_samples(n))
                gold.setdefault(reward, {})[n] = claims_lib.per_prompt(rows, "gold")
                kl.setdefault(reward, {})[n] = claims_lib.per_prompt(rows, "kl_k1")
    parts = [(f"synthetic LLM task ({reward})", claims_lib.llm_claims(gold[reward], kl[reward], reward, over))
             for reward in gold]
    parts.append(("synthetic LLM task (across gold rewards)", claims_lib.llm_peak_claims(gold, over)))
    return parts, over


def seeds_table(evals: dict, seed_runs: list) -> list:
    lines = ["| gold reward | policy | gold reward, mean [95% CI over seeds] | KL k1, mean [95% CI over seeds] | seeds |",
             "|---|---|---|---|---|"]
    for reward, policies in evals.items():
        for n, own in policies.items():
            runs = [own] + [r["tasks"][reward][n] for r in seed_runs if n in r["tasks"].get(reward, {})]
            (g, g_half), (k, k_half) = (mean_ci([r[key] for r in runs]) for key in ("gold_reward", "kl_k1"))
            lines.append(f"| {reward} | {n} | {g:.2f} [{g - g_half:.2f}, {g + g_half:.2f}] | "
                         f"{k:.2f} [{k - k_half:.2f}, {k + k_half:.2f}] | {len(runs)} |")
    return lines


def eval_table(evals: dict) -> list:
    """One row per policy; the gold reward's ± is the half-width of its 95% interval over held-out prompts."""
    lines = ["| policy | " + " | ".join(c[1] for c in EVAL_COLUMNS) + " |", "|---" * (len(EVAL_COLUMNS) + 1) + "|"]
    for n, e in evals.items():
        cells = [f"{e['gold_reward']:.2f} ± {e['gold_reward_ci95']:.2f}"] + [f"{e[k]:.3f}" for k, _ in EVAL_COLUMNS[1:]]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return lines


def rm_sentence(path) -> str:
    rm = json.loads(Path(path).read_text())
    text = f"Reward model on held-out pairs: label accuracy {rm['held_out_label_accuracy']:.3f}"
    if "held_out_gold_correlation" not in rm:
        return text + f" (untrained {rm['held_out_label_accuracy_untrained']:.3f})."
    return text + (f", gold-order accuracy {rm['held_out_gold_order_accuracy']:.3f}, correlation with gold "
                   f"{rm['held_out_gold_correlation']:.3f}.")


def build_report(algorithms: list, variants: dict = None, seed: int = 0, root=".") -> str:
    """metrics/report.md, metrics/claims.json and the figures, from the files under `root`."""
    root = Path(root)
    m = root / "metrics"
    figures = m / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    tasks = llm_tasks(algorithms, variants or {}, root)
    (gold_name, (main_task, _)), *variant_tasks = tasks.items()
    evals_by_task = load_evals(tasks, root)
    evals = evals_by_task[gold_name]
    didactic = {}
    for name in ("bandit", "coverage", "token_bandit"):
        path = m / "didactic" / f"{name}.json"
        didactic[name] = json.loads(path.read_text()) if path.exists() else None
    bandit, coverage, token_bandit = didactic["bandit"], didactic["coverage"], didactic["token_bandit"]
    seed_runs = load_seed_runs(m / "seeds")
    llm_parts, over = llm_claim_parts(tasks, evals_by_task, seed, seed_runs, root)
    if "dpo" in evals:
        llm_parts.append((f"synthetic LLM task ({gold_name})", {"3": claims_lib.dpo_likelihood_check(evals["dpo"])}))
    claims = claims_lib.all_claims(bandit, coverage, token_bandit, llm_parts)
    atomic_write_json(m / "claims.json", claims)
    lines = ["# pftlab report", "", "## The papers' claims", "",
             "Verdicts are computed by `src/pftlab/reporting/claims.py` from the metrics of this run: *reproduced* when "
             "the 95% interval of the difference lies on the claimed side of zero, *not reproduced* when it lies on the "
             "other side, *inconclusive* otherwise. Every interval and every ± in this report is the same 95% Student-t "
             "interval of a mean (`src/pftlab/core/stats.py`); what it varies over is named with it. In the didactic "
             "settings it is over seeds (independent training runs); in the LLM tasks it is over "
             f"{over}" + (" (the sampling noise of one training run, not the spread between runs: collect more training "
                          "seeds with `python -m pftlab.reporting.seeds`, see README)" if not seed_runs else "") + ".", ""]
    lines += claims_markdown(claims)
    judge = ("Human-labelled pairs have no gold reward: the reward model judges (its score stands in the "
             "gold reward column). " if gold_name == "reward_model" else f"Gold reward: `{gold_name}`. ")
    lines += ["", "## The LLM task", "", judge +
              "Evaluation on held-out prompts; KL and win rate are against the SFT policy. The gold reward's ± is the "
              "half-width of its 95% interval over held-out prompts (each prompt's mean over its samples): the sampling "
              "noise of one training run, not the spread between training runs.", "",
             ] + eval_table(evals)
    lines += ["", rm_sentence(root / main_task.metrics("reward_model"))]
    for reward, (task, _) in variant_tasks:
        lines += ["", f"### The same task under the `{reward}` gold reward", "",
                  "The same SFT samples relabelled; a reward model and policies trained on those labels.", ""]
        lines += eval_table(evals_by_task[reward])
        lines += ["", rm_sentence(root / task.metrics("reward_model"))]
    if seed_runs:
        lines += ["", "### Across training seeds", "",
                  "Each seed's evaluation mean; the 95% interval is over training seeds (the spread between runs).", ""]
        lines += seeds_table(evals_by_task, seed_runs)
    lines += ["", "## Algorithms", "", table_markdown(), "",
              "## Figures", "", "![learning curves](figures/learning_curves.png)", "",
              "![gold reward vs KL](figures/reward_vs_kl.png)", "", "![SFT loss](figures/sft_loss.png)", ""]
    if bandit:
        plot_bandit({(r, s): read_curve(m / "curves" / f"bandit_{r}_{s}.csv") for r in ("aligned", "misaligned")
                     for s in ("offline", "on_policy")}, list(dict.fromkeys(k.split("/")[1] for k in bandit["runs"])),
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
    if coverage:
        lines += ["### Coverage problems (Song et al.)", ""]
        plot_coverage({k: read_curve(m / "curves" / f"coverage_{k}.csv") for k in ("linear", "tabular")}, figures / "coverage.png")
        lines += ["Mean over seeds:", "", "![coverage](figures/coverage.png)", ""]
    lines += ["## Stage times (seconds, wall clock, this machine)", "", "| stage | seconds |", "|---|---|"]
    stage_files = [("prepare", m / "prepare.json"), ("tokenizer", m / "tokenizer.json"), ("sft", m / "sft.json"),
                   ("sft_samples", m / "sft_samples.json")]
    for _, (task, task_names) in tasks.items():
        stage_files += [(task.stage(kind), root / task.metrics(kind)) for kind in ("pairs", "reward_model")]
        stage_files += [(task.stage("policy", a), root / task.metrics("policy", a)) for a in task_names if a != "sft"]
        stage_files += [(task.stage("evaluate", n), root / task.metrics("eval", n)) for n in task_names]
    stage_files += [(s, m / "didactic" / f"{s}.json") for s in ("bandit", "token_bandit", "coverage")
                    if (m / "didactic" / f"{s}.json").exists()]
    total = 0.0
    for stage, path in stage_files:
        seconds = json.loads(path.read_text()).get("seconds", float("nan"))
        total += seconds
        lines.append(f"| {stage} | {seconds:.1f} |")
    lines.append(f"| total (without report) | {total:.1f} |")
    plot_learning_curves({a: read_curve(m / "curves" / f"policy_{a}.csv") for a in algorithms}, figures / "learning_curves.png")
    plot_reward_vs_kl(evals, figures / "reward_vs_kl.png")
    plot_sft(read_curve(m / "curves" / "sft.csv"), figures / "sft_loss.png")
    text = "\n".join(lines) + "\n"
    atomic_write_text(m / "report.md", text)
    return text
