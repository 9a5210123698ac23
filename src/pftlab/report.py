"""metrics/report.md and its figures, built only from the metrics files the stages wrote."""
import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .algorithms import table_markdown  # noqa: E402
from .io import atomic_write_text  # noqa: E402

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
    ax.set_ylabel("gold reward (mean, 95% CI)")
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


def build_report(algorithms: list, metrics_dir="metrics") -> str:
    m = Path(metrics_dir)
    figures = m / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    names = ["sft"] + list(algorithms)
    evals = {n: json.loads((m / "eval" / f"{n}.json").read_text()) for n in names}
    lines = ["# pftlab report", "", f"Gold reward: `{json.loads((m / 'pairs.json').read_text())['gold_reward']}`. "
             "Evaluation on held-out prompts; KL and win rate are against the SFT policy.", "",
             "| policy | " + " | ".join(c[1] for c in EVAL_COLUMNS) + " |", "|---" * (len(EVAL_COLUMNS) + 1) + "|"]
    for n in names:
        e = evals[n]
        cells = [f"{e['gold_reward']:.2f} ± {e['gold_reward_ci95']:.2f}"] + [f"{e[k]:.3f}" for k, _ in EVAL_COLUMNS[1:]]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    rm = json.loads((m / "reward_model.json").read_text())
    lines += ["", f"Reward model on held-out pairs: label accuracy {rm['held_out_label_accuracy']:.3f}, "
              f"gold-order accuracy {rm['held_out_gold_order_accuracy']:.3f}, correlation with gold "
              f"{rm['held_out_gold_correlation']:.3f}.", "", "## Algorithms", "", table_markdown(), "",
              "## Figures", "", "![learning curves](figures/learning_curves.png)", "",
              "![gold reward vs KL](figures/reward_vs_kl.png)", "", "![SFT loss](figures/sft_loss.png)", "",
              "## Stage times (seconds, wall clock, this machine)", "", "| stage | seconds |", "|---|---|"]
    stage_files = [("prepare", m / "prepare.json"), ("tokenizer", m / "tokenizer.json"), ("sft", m / "sft.json"),
                   ("pairs", m / "pairs.json"), ("reward_model", m / "reward_model.json")]
    stage_files += [(f"policy@{a}", m / "policy" / f"{a}.json") for a in algorithms]
    stage_files += [(f"evaluate@{n}", m / "eval" / f"{n}.json") for n in names]
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
