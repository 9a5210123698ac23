"""metrics/report.md and its figures, built only from the metrics files the stages wrote."""
import csv
import json
import statistics
from pathlib import Path

import matplotlib

from pftlab.algorithms.table import table_markdown
from pftlab.core.io import atomic_write_json, atomic_write_text, read_jsonl
from pftlab.core.paths import Task, seeds_stage
from pftlab.core.stats import mean_ci
from pftlab.reporting import claims as claims_lib
from pftlab.reporting.paper_numbers import paper_evidence_markdown
from pftlab.reporting.seeds import load_seed_runs, pipeline_seed_runs

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


SAMPLING_LINES = {"on_policy": "-", "offline": "--", "hybrid": ":"}  # and markers for points
SAMPLING_MARKERS = {"on_policy": "o", "offline": "s", "hybrid": "D"}
FAMILY_COLOURS = {"max-likelihood": "Blues", "RL": "Oranges", "contrastive": "Greens"}


def algorithm_styles(names) -> dict:
    """Colour by family (a shade per member), line style and marker by sampling: on-policy solid / circle,
    offline dashed / square, hybrid dotted / diamond. Anything not in the table (sft) is black."""
    from pftlab.algorithms.table import ALGORITHMS

    families = {}
    for name in names:
        families.setdefault(ALGORITHMS[name].family if name in ALGORITHMS else "", []).append(name)
    styles = {}
    for family, members in families.items():
        for i, name in enumerate(members):
            source = ALGORITHMS[name].source if name in ALGORITHMS else "offline"
            colour = plt.get_cmap(FAMILY_COLOURS[family])(0.45 + 0.5 * i / max(1, len(members) - 1)) if family else "black"
            styles[name] = {"color": colour, "linestyle": SAMPLING_LINES[source], "marker": SAMPLING_MARKERS[source]}
    return styles


def _by_step(rows: list, key: str) -> dict:
    return {r["step"]: r[key] for r in rows if key in r}


def plot_curve(ax, runs: list, key: str, style: dict, label: str):
    """One algorithm's curve: the line, or with several training seeds their mean and a 95% band over seeds."""
    series = [_by_step(rows, key) for rows in runs if rows]
    series = [s for s in series if s]
    if not series:
        return
    steps = sorted(set.intersection(*(set(s) for s in series)))
    line = {k: v for k, v in style.items() if k != "marker"}
    if len(series) == 1:
        ax.plot(steps, [series[0][t] for t in steps], label=label, **line)
        return
    stats = [mean_ci([s[t] for s in series]) for t in steps]
    ax.plot(steps, [m for m, _ in stats], label=f"{label} ({len(series)} seeds)", **line)
    ax.fill_between(steps, [m - h for m, h in stats], [m + h for m, h in stats], color=style["color"], alpha=0.15,
                    linewidth=0)


def plot_learning_curves(runs: dict, path_shared, path_losses):
    """Comparable quantities overlaid (proxy reward and KL of fresh samples); each algorithm's own loss, on its
    own scale, in a small multiple. `runs[name]`: one curve per training seed."""
    styles = algorithm_styles(runs)
    shared = [("proxy_reward", "proxy reward of fresh samples"), ("kl_k1", "KL(pi || ref) of fresh samples (k1)")]
    fig, axes = plt.subplots(1, len(shared), figsize=(6 * len(shared), 4.2))
    for ax, (key, title) in zip(axes, shared):
        for name, curves in runs.items():
            plot_curve(ax, curves, key, styles[name], name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient step")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8,
               title="colour: family; solid on-policy,\ndashed offline, dotted hybrid", title_fontsize=8)
    _save(fig, path_shared)
    columns = 5
    rows = (len(runs) + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.5 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, runs.items()):
        plot_curve(ax, curves, "loss", styles[name], name)
        ax.set_title(f"{name} loss", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    fig.suptitle("Training loss per algorithm (each on its own scale: the objectives differ)", fontsize=10)
    fig.tight_layout()
    _save(fig, path_losses)


def plot_step_panels(curves: dict, panels: list, path):
    """One panel per (key, title), one line per labelled curve, against the gradient step."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (key, title) in zip(axes, panels):
        for label, rows in curves.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("gradient step")
        if ax.lines:
            ax.legend(fontsize=8)
    _save(fig, path)


# Offline DPO step by step, one line per training seed: the pairs' log-likelihoods, length and KL
DPO_DIAGNOSIS = [("logp_chosen", "log pi(y_w) of the training pairs"), ("logp_rejected", "log pi(y_l) of the training pairs"),
                 ("response_tokens", "length of fresh samples (tokens)"), ("kl_k1", "KL(pi || ref) of fresh samples (k1)")]


def dpo_diagnosis_text(curves: dict, sft: dict, dpo: dict) -> list:
    """What the curves say, computed: first and last value of each quantity, per seed."""
    lines = ["### Offline DPO, step by step", "",
             "| seed | log pi(y_w): start -> end | log pi(y_l): start -> end | length of fresh samples: start -> end | "
             "KL k1: end |", "|---|---|---|---|---|"]
    for label, rows in curves.items():
        first = lambda k: next((r[k] for r in rows if k in r), float("nan"))
        last = lambda k: next((r[k] for r in reversed(rows) if k in r), float("nan"))
        lines.append(f"| {label} | {first('logp_chosen'):.1f} -> {last('logp_chosen'):.1f} | {first('logp_rejected'):.1f} -> "
                     f"{last('logp_rejected'):.1f} | {first('response_tokens'):.1f} -> {last('response_tokens'):.1f} | "
                     f"{last('kl_k1'):.1f} |")
    lines += ["", f"Held-out: DPO gold reward {dpo['gold_reward']:.2f} (SFT {sft['gold_reward']:.2f}), length "
              f"{dpo['response_length']:.1f} (SFT {sft['response_length']:.1f}), ends with EOS {dpo['eos_fraction']:.2f} "
              f"(SFT {sft['eos_fraction']:.2f}), KL k1 {dpo['kl_k1']:.1f}.", "", "![offline DPO](figures/dpo_diagnosis.png)", ""]
    return lines


def label_offsets(points: dict, height: float = 10.0, width: float = 55.0, top: float = float("inf")) -> dict:
    """{name: (dx, dy)} label offsets in points, right of each point: the nearest free place above or below it,
    so that no two labels whose x ranges meet overlap and none rises past `top` (greedy, lowest point first)."""
    placed, out = [], {}
    for name, (x, y) in sorted(points.items(), key=lambda kv: kv[1][1]):
        for shift in (j * height * sign for j in range(2 * len(points) + 1) for sign in (1, -1)):
            at = y + 4 + shift
            if at + height <= top and not any(abs(px - x) < width and abs(py - at) < height for px, py in placed):
                break
        placed.append((x, at))
        out[name] = (5, at - y)
    return out


def plot_reward_vs_kl(evals: dict, path):
    """Each policy a labelled point (colour: family; marker: sampling), its 95% interval over held-out prompts."""
    styles = algorithm_styles(evals)
    fig, ax = plt.subplots(figsize=(6.5, 4.8))
    for name, m in evals.items():
        ax.errorbar(m["kl_k1"], m["gold_reward"], yerr=m["gold_reward_ci95"], fmt=styles[name]["marker"], capsize=3,
                    color=styles[name]["color"], markeredgecolor="black", markeredgewidth=0.5)
    fig.canvas.draw()  # the limits are final: labels are placed in points on the page
    points = {n: ax.transData.transform((m["kl_k1"], m["gold_reward"])) * 72 / fig.dpi for n, m in evals.items()}
    for name, (dx, dy) in label_offsets(points, top=ax.get_window_extent().y1 * 72 / fig.dpi).items():
        ax.annotate(name, (evals[name]["kl_k1"], evals[name]["gold_reward"]), textcoords="offset points", xytext=(dx, dy),
                    fontsize=8, arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "0.5"} if abs(dy - 4) > 6 else None)
    ax.set_xlabel("reverse KL to SFT (k1, per sequence)")
    ax.set_ylabel("gold reward (mean, 95% CI over held-out prompts)")
    ax.set_title("circle on-policy, square offline, diamond hybrid; colour: family", fontsize=9)
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
    and shaded, its 95% t-interval over seeds (the seeds' min to max for curves written before that column)."""
    keys = sorted({k[0] for k in curves}, reverse=True), ("on_policy", "offline")
    fig, axes = plt.subplots(2, len(keys[0]), figsize=(5.5 * len(keys[0]), 7), squeeze=False)
    for col, reward in enumerate(keys[0]):
        for row, sampling in enumerate(keys[1]):
            ax, rows = axes[row, col], curves[(reward, sampling)]
            for i, method in enumerate(methods):
                if rows and method in rows[0]:
                    steps = [r["step"] for r in rows]
                    ax.plot(steps, [r[method] for r in rows], color=plt.cm.tab10(i), label=method)
                    if f"{method}_ci95" in rows[0]:
                        low = [r[method] - r[f"{method}_ci95"] for r in rows]
                        high = [r[method] + r[f"{method}_ci95"] for r in rows]
                    else:
                        low, high = [r[f"{method}_min"] for r in rows], [r[f"{method}_max"] for r in rows]
                    ax.fill_between(steps, low, high, color=plt.cm.tab10(i), alpha=0.12, linewidth=0)
            ax.set_title(f"{reward} reward, {sampling.replace('_', '-')}", fontsize=10)
            ax.set_xlabel("gradient step")
            ax.set_ylabel("eval reward (mean; band: 95% over seeds)")
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
    """One row per claim: our verdict, our checks, and beside them what the papers report (paper_numbers.py)."""
    lines = ["| claim | verdict | our checks: setting, comparison, mean [95% CI] over n, verdict | the papers: where, what they report |",
             "|---|---|---|---|"]
    for cid, c in claims.items():
        checks = "<br>".join(f"{x['setting']}: {x['comparison']} ({x['quantity']}): {x['mean']:.3g} "
                             f"[{x['ci95'][0]:.3g}, {x['ci95'][1]:.3g}] over {x['n']} {x['over']}: *{x['verdict']}*"
                             for x in c["checks"]) or "no setting measures it in this run"
        lines.append(f"| {cid}. {c['claim']} | **{c['verdict']}** | {checks} | {paper_evidence_markdown(cid) or '-'} |")
    return lines


def uncovered_mass_section(table: dict) -> list:
    """Claim 6 examined: the uncovered mass under DPO by optimiser, parametrisation and start."""
    lines = ["#### Claim 6: where the uncovered mass goes under DPO", "",
             "With independent logits the DPO gradient of a pair is -beta sigma(-m) (e_w - e_l): under SGD the uncovered "
             "logits never move and the covered logits keep their sum, so the uncovered mass rises only if the covered "
             "probabilities become more even. From a start uniform over the covered responses (the paper's pi_ref) "
             "it can never exceed its start (the sum of exponentials at a fixed sum is least when all are equal). "
             "The table runs the paper's bandit under both optimisers, from other starts (random; `anti`: favouring "
             "the responses the data calls worse) and with shared 16-dim features (src/pftlab/didactic/coverage_mass.py, "
             "tests/test_coverage_mass.py; docs/SETUPS.md).", "",
             "| optimiser / parametrisation / start | uncovered mass at start | at end, mean [min, max] over seeds | "
             "seeds where it rose | change of the covered logits' sum |", "|---|---|---|---|---|"]
    for case, v in table.items():
        rose = sum(e > s + 1e-6 for s, e in zip(v["start"], v["end"]))
        end = f"{statistics.mean(v['end']):.3f} [{min(v['end']):.3f}, {max(v['end']):.3f}]"
        lines.append(f"| {case} | {statistics.mean(v['start']):.3f} | {end} | {rose} / {len(v['end'])} | "
                     f"{statistics.mean(v['covered_logit_sum_change']):.2g} |")
    return lines + [""]


def sweep_section(summary: dict) -> list:
    """The hyperparameter sweep's table per algorithm, best validation reward first, and its rule."""
    lines = ["### Hyperparameter sweep", "", f"Selection rule: {summary['rule']}. Each row is one `dvc exp` "
             "(`python -m pftlab.reporting.sweep`, README); the evaluated prompts' reward is shown, never used to select.", "",
             "| algorithm | setting (what varies) | validation gold reward [95% CI over prompts] | validation KL k1 "
             "| evaluated gold reward | |",
             "|---|---|---|---|---|---|"]
    kept = [a for a, e in summary["algorithms"].items() if "kept" in e or any(r.get("earlier") for r in e["rows"])]
    for algorithm, entry in summary["algorithms"].items():
        # only the knobs that differ between the algorithm's rows; an absent lr is policy.lr
        keys = sorted({k for r in entry["rows"] for k in r["setting"]})
        varying = [k for k in keys if len({repr(r["setting"].get(k)) for r in entry["rows"]}) > 1]
        for row in entry["rows"]:
            if row["experiment"] == "workspace" and any(r is not row and r["setting"] == row["setting"] for r in entry["rows"]):
                continue  # the workspace at an experiment's setting: the same numbers twice
            v, half = row["validation_gold_reward"], row.get("validation_gold_reward_ci95", float("nan"))
            shown = {k: row["setting"].get(k, "policy.lr" if k == "lr" else "-") for k in varying}
            setting = ", ".join(f"{k}={x}" for k, x in shown.items()) or "(defaults)"
            mark = "selected" if row["setting"] == entry["selected"] else ("params.yaml" if row["setting"] == entry["current"] else "")
            label = f"{algorithm} (earlier)" if "kept" in entry or row.get("earlier") else algorithm
            lines.append(f"| {label} | {setting} | {v:.2f} [{v - half:.2f}, {v + half:.2f}] | "
                         f"{row.get('validation_kl_k1', float('nan')):.2f} | {row.get('gold_reward', float('nan')):.2f} | {mark} |")
    if kept:
        lines += ["", f"(earlier): rows of {', '.join(kept)} kept from an earlier summary (a sweep run before other "
                  "params changed, or the previous default run): shown, not selected from (a selection made then stays in "
                  "params.yaml)."]
    return lines + [""]


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
    """The LLM tasks' claims over held-out prompts (every policy, one training seed) and, for the policies that
    other training seeds exist for, over training seeds too. Returns (parts, what the intervals vary over)."""
    tasks = {r: t for r, t in tasks.items() if r in claims_lib.PEAK_WHERE_SFT_IS_LIKELY}  # a gold reward to judge by
    over = "held-out prompts, one training seed"
    gold, kl = {}, {}
    for reward, (task, names) in tasks.items():
        for n in names:
            rows = read_jsonl(root / task.eval_samples(n))
            gold.setdefault(reward, {})[n] = claims_lib.per_prompt(rows, "gold")
            kl.setdefault(reward, {})[n] = claims_lib.per_prompt(rows, "kl_k1")
    parts = [(f"synthetic LLM task ({reward})", claims_lib.llm_claims(gold[reward], kl[reward], reward, over)) for reward in gold]
    parts.append(("synthetic LLM task (across gold rewards)", claims_lib.llm_peak_claims(gold, over)))
    gold_s, kl_s = seed_values(evals, seed_runs, tasks)
    if gold_s:
        seeds = [seed] + [r["seed"] for r in seed_runs]
        over_seeds = f"training seeds ({', '.join(map(str, seeds))})"
        parts += [(f"synthetic LLM task ({reward}), policies with {len(seeds)} training seeds",
                   claims_lib.llm_claims(gold_s[reward], kl_s[reward], reward, over_seeds)) for reward in gold_s]
        parts.append(("synthetic LLM task (across gold rewards), training seeds", claims_lib.llm_peak_claims(gold_s, over_seeds)))
        over = f"{over}; for {', '.join(sorted({n for g in gold_s.values() for n in g}))} also {over_seeds}"
    return parts, over


def seed_values(evals: dict, seed_runs: list, tasks: dict) -> tuple:
    """{reward: {policy: [this run's value, then each other seed's]}} of gold reward and KL, for the policies
    every seed run has."""
    gold, kl = {}, {}
    for reward in tasks:
        for n, own in evals.get(reward, {}).items():
            runs = [r["tasks"].get(reward, {}).get(n) for r in seed_runs]
            if seed_runs and all(runs):
                gold.setdefault(reward, {})[n] = [own["gold_reward"]] + [r["gold_reward"] for r in runs]
                kl.setdefault(reward, {})[n] = [own["kl_k1"]] + [r["kl_k1"] for r in runs]
    return gold, kl


def seeds_table(evals: dict, seed: int, seed_runs: list) -> list:
    """One row per policy with other training seeds: each seed's held-out gold reward, then the mean and its
    95% interval over seeds, and the same for KL."""
    seeds = [seed] + [r["seed"] for r in seed_runs]
    lines = ["| gold reward | policy | " + " | ".join(f"seed {s}" for s in seeds) +
             " | gold reward, mean [95% CI over seeds] | KL k1, mean [95% CI over seeds] |", "|---" * (len(seeds) + 4) + "|"]
    gold, kl = seed_values(evals, seed_runs, evals)
    for reward, policies in gold.items():
        for n, values in policies.items():
            (g, g_half), (k, k_half) = mean_ci(values), mean_ci(kl[reward][n])
            lines.append(f"| {reward} | {n} | " + " | ".join(f"{v:.2f}" for v in values) +
                         f" | {g:.2f} [{g - g_half:.2f}, {g + g_half:.2f}] | {k:.2f} [{k - k_half:.2f}, {k + k_half:.2f}] |")
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


def build_report(algorithms: list, variants: dict = None, seed: int = 0, root=".", training_seeds: dict = None) -> str:
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
    seed_runs = pipeline_seed_runs(training_seeds or {}, gold_name, root)
    seed_runs += [r for r in load_seed_runs(m / "seeds") if r["seed"] not in {s["seed"] for s in seed_runs}]
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
    lines += ["", rm_sentence(root / main_task.metrics("reward_model"))]
    for reward, (task, _) in variant_tasks:
        lines += ["", f"### The same task under the `{reward}` gold reward", "",
                  "The same SFT samples relabelled; a reward model and policies trained on those labels.", ""]
        lines += eval_table(evals_by_task[reward])
        lines += ["", rm_sentence(root / task.metrics("reward_model"))]
    if (m / "sweep" / "summary.json").exists():
        lines += [""] + sweep_section(json.loads((m / "sweep" / "summary.json").read_text()))
    if seed_runs:
        lines += ["", "### Across training seeds", "",
                  "Each seed's held-out mean (the same SFT model, pairs and reward model; only the policy's training "
                  "seed differs); the 95% interval is over training seeds (the spread between runs).", ""]
        lines += seeds_table(evals_by_task, seed, seed_runs)
    # every policy's training curves, keyed by training seed: the DPO diagnosis and the learning curves share them
    policy_curves = {a: {seed: read_curve(m / "curves" / f"policy_{a}.csv")} for a in algorithms}
    for run in seed_runs:
        if run["experiment"] == "training_seeds":
            for a in run["tasks"][gold_name]:
                policy_curves.setdefault(a, {})[run["seed"]] = read_curve(root / Task(seed=run["seed"]).curve("policy", a))
    if "dpo" in evals:
        dpo_curves = {f"seed {s}": rows for s, rows in policy_curves["dpo"].items()}
        plot_step_panels(dpo_curves, DPO_DIAGNOSIS, figures / "dpo_diagnosis.png")
        lines += [""] + dpo_diagnosis_text(dpo_curves, evals["sft"], evals["dpo"])
    lines += ["", "## Algorithms", "", table_markdown(), "",
              "## Figures", "", "![learning curves](figures/learning_curves.png)", "",
              "![losses, one panel per algorithm](figures/losses.png)", "",
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
        if "uncovered_mass_by_case" in coverage:
            lines += uncovered_mass_section(coverage["uncovered_mass_by_case"])
    lines += ["## Stage times (seconds, wall clock, this machine)", "",
              "*start-up*: from the stage's process start to its first line of work (Python and its imports); "
              "*work*: the stage itself. What DVC adds around them (hashing, `dvc.lock`) is in neither: "
              "`python bench/repro_timeline.py` runs `dvc repro` and measures all three.", "",
              "| stage | start-up | work |", "|---|---|---|"]
    stage_files = [("prepare", m / "prepare.json"), ("tokenizer", m / "tokenizer.json"), ("sft", m / "sft.json"),
                   ("sft_samples", m / "sft_samples.json")]
    for _, (task, task_names) in tasks.items():
        stage_files += [(task.stage(kind), root / task.metrics(kind)) for kind in ("pairs", "reward_model")]
        stage_files += [(task.stage("policy", a), root / task.metrics("policy", a)) for a in task_names if a != "sft"]
        stage_files += [(task.stage("evaluate", n), root / task.metrics("eval", n)) for n in task_names]
    pipeline_seeds = [run for run in seed_runs if run["experiment"] == "training_seeds"]
    for n in dict.fromkeys(n for run in pipeline_seeds for n in run["tasks"][gold_name]):
        # stage seeds@<n>: its runs in the order it runs them, in one process (start-up on the first)
        tasks = [Task(seed=run["seed"]) for run in pipeline_seeds if n in run["tasks"][gold_name]]
        stage_files += [(f"{seeds_stage(n)}: {task.stage(kind, n)}", root / task.metrics(folder, n))
                        for kind, folder in (("policy", "policy"), ("evaluate", "eval")) for task in tasks]
    stage_files += [(s, m / "didactic" / f"{s}.json") for s in ("bandit", "token_bandit", "coverage")
                    if (m / "didactic" / f"{s}.json").exists()]
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
    plot_sft(read_curve(m / "curves" / "sft.csv"), figures / "sft_loss.png")
    text = "\n".join(lines) + "\n"
    atomic_write_text(m / "report.md", text)
    return text
