"""The report's figures (PNG, written atomically), each drawn from curves and metrics already read
(results.py): learning curves over training seeds, reward against KL, the SFT loss, the bandit and coverage
problems. Colour says an algorithm's family, line style and marker its sampling."""
from pathlib import Path

import matplotlib

from pftlab.core.stats import mean_ci

matplotlib.use("Agg")  # files only, no display: before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402


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
    from pftlab.algorithms.taxonomy import TAXONOMY

    families = {}
    for name in names:
        families.setdefault(TAXONOMY[name].family if name in TAXONOMY else "", []).append(name)
    styles = {}
    for family, members in families.items():
        for i, name in enumerate(members):
            source = TAXONOMY[name].source if name in TAXONOMY else "offline"
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


def plot_learning_curves(runs: dict, path):
    """Comparable quantities overlaid: proxy reward and KL of fresh samples. `runs[name]`: one curve per training
    seed."""
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
    _save(fig, path)


def plot_losses(runs: dict, path):
    """Each algorithm's own loss, on its own scale, in a small multiple. `runs[name]`: one curve per training seed."""
    styles = algorithm_styles(runs)
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
    _save(fig, path)


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


def plot_frontier(points: dict, path):
    """DPO and HyPO: every run's (KL, gold reward), hollow for the sweep's experiments, filled for the training seeds,
    and each method's frontier (claims.frontier) as a line."""
    from pftlab.reporting.claims import frontier

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for (name, pts), colour in zip(points.items(), ("tab:green", "tab:purple")):
        for kind, face in (("sweep", "none"), ("seed", colour)):
            xs = [(k, r) for k, r, where in pts if where == kind]
            ax.scatter([k for k, _ in xs], [r for _, r in xs], facecolors=face, edgecolors=colour, s=36,
                       label=f"{name}: {'sweep experiments' if kind == 'sweep' else 'training seeds'}")
        front = frontier([(k, r) for k, r, _ in pts])
        ax.step([k for k, _ in front], [r for _, r in front], where="post", color=colour, lw=1.2, alpha=0.7)
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("reverse KL to SFT (k1, per sequence; log scale above 1)")
    ax.set_ylabel("gold reward (held-out prompts)")
    ax.set_title("DPO vs HyPO: up and to the left is better; lines: each method's frontier", fontsize=9)
    ax.legend(fontsize=7)
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
    fig.tight_layout()  # the lower row's titles clear the upper row's axis labels
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
    """Left: final reward against T at equal gradient steps. With curves, beside it: reward against fresh samples
    and against compute (a fresh sample costing the middle of `reuse_sample_costs`), T = 1's curve and each T's end,
    each with its 95% t-interval over seeds."""
    runs = bandit["runs"]
    methods = sorted({k.split("/")[1] for k in runs if "/reuse_" in k})
    with_curves = any("curve" in v for k, v in runs.items() if "/reuse_" in k)
    costs = bandit.get("reuse_sample_costs", [])
    cost = sorted(costs)[len(costs) // 2] if costs else None
    panels = 1 + with_curves + (with_curves and cost is not None and all(
        "collection_samples" in v for k, v in runs.items() if "/reuse_" in k))
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    ax = axes[0][0]
    for method in methods:
        ts = sorted({int(k.split("_")[-1]) for k in runs if k.startswith(f"misaligned/{method}/reuse_")})
        stats = [mean_ci(runs[f"misaligned/{method}/reuse_{t}"]["final_reward"]) for t in ts]
        ax.errorbar(ts, [m for m, _ in stats], yerr=[half for _, half in stats], fmt="o-", capsize=3, label=method)
    ax.set_xscale("log")
    ax.set_title("at equal gradient steps", fontsize=10)
    ax.set_xlabel("gradient steps per collection T (gradient steps fixed)")
    ax.set_ylabel("final eval reward, misaligned (95% CI over seeds)")
    ax.legend(fontsize=8)
    spent = {("at equal fresh samples", "fresh samples drawn", "log"): lambda point, cell: point["samples"],
             ("at equal compute (ours)", f"compute (sample passes of a gradient step; a fresh sample costs {cost:g})",
              "linear"): lambda point, cell: cost * point["samples"] + point["step"] * cell["collection_samples"]}
    for ax, ((title, xlabel, scale), x) in zip(axes[0][1:], spent.items()):
        for i, method in enumerate(methods):
            cells = {int(k.split("_")[-1]): v for k, v in runs.items() if k.startswith(f"misaligned/{method}/reuse_")}
            colour = f"C{i}"
            if 1 in cells:
                curve, xs = cells[1]["curve"], [x(p, cells[1]) for p in cells[1]["curve"]]
                stats = [mean_ci(p["reward"]) for p in curve]
                ax.plot(xs, [m for m, _ in stats], color=colour, label=f"{method} T=1")
                ax.fill_between(xs, [m - h for m, h in stats], [m + h for m, h in stats], color=colour, alpha=0.15, linewidth=0)
            ends = [(x(cell["curve"][-1], cell), *mean_ci(cell["curve"][-1]["reward"])) for t, cell in sorted(cells.items()) if t > 1]
            ax.errorbar([e for e, _, _ in ends], [m for _, m, _ in ends], yerr=[h for _, _, h in ends], fmt="o--", capsize=3,
                        color=colour, label=f"{method} T>1 (end)")
        ax.set_xscale(scale)  # compute: every T > 1 ends between half and all of T = 1's, too close for a log axis
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel("eval reward, misaligned (95% CI over seeds)")
        ax.legend(fontsize=7, loc="lower right")
    _save(fig, path)


def _band(rows: list, key: str, prefix: str):
    """(low, high) of the mean column `key`: -/+ the `<prefix>_ci95` half-width, else the `<prefix>_min`/`_max`
    columns, else None (curves written before the band columns existed; one seed: an infinite half-width)."""
    finite = lambda v: v is not None and v == v and abs(v) != float("inf")
    if all(finite(r.get(f"{prefix}_ci95")) for r in rows):
        return [r[key] - r[f"{prefix}_ci95"] for r in rows], [r[key] + r[f"{prefix}_ci95"] for r in rows]
    if all(finite(r.get(f"{prefix}_min")) and finite(r.get(f"{prefix}_max")) for r in rows):
        return [r[f"{prefix}_min"] for r in rows], [r[f"{prefix}_max"] for r in rows]
    return None


def plot_band_curve(ax, rows: list, key: str, label: str, colour, prefix: str = None):
    """A mean-over-seeds column against step, shaded by its 95% t-interval over seeds (or min-max) where written:
    columns `<prefix>_ci95` (or `_min`, `_max`), the prefix `key` unless given."""
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r[key] for r in rows], color=colour, label=label)
    band = _band(rows, key, prefix or key)
    if band:
        ax.fill_between(steps, *band, color=colour, alpha=0.15, linewidth=0)


def plot_coverage(curves: dict, path):
    """Song et al.'s coverage runs: the mean over seeds per method, shaded by its 95% t-interval over seeds."""
    panels = [("linear", "logp_preferred", "linear: mean log pi of preferred responses"),
              ("linear", "logp_best", "linear: log pi of the unseen best response"),
              ("tabular", "uncovered_mass", "tabular: mass on uncovered responses"), ("tabular", "kl", "tabular: KL(pi || pi_ref)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for ax, (kind, q, title) in zip(axes, panels):
        rows = curves[kind]
        for i, method in enumerate(("rlhf", "dpo", "hypo")):
            if f"{method}_{q}" in rows[0]:
                plot_band_curve(ax, rows, f"{method}_{q}", method, plt.cm.tab10(i))
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.suptitle("mean over seeds; band: 95% t-interval over seeds", fontsize=9)
    _save(fig, path)


def plot_claim6(rows: list, path):
    """Claim 6: the uncovered mass under DPO per setting (optimiser/parametrisation/start), mean and 95% band over seeds."""
    cases = [c[: -len("_mean")] for c in rows[0] if c.endswith("_mean")]
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, case in enumerate(cases):
        plot_band_curve(ax, rows, f"{case}_mean", case.replace("_", "/"), plt.cm.tab10(i), prefix=case)
    ax.set_xlabel("DPO iteration")
    ax.set_ylabel("mass on uncovered responses (band: 95% over seeds)")
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_token_bandit(runs: dict, path):
    """The token-level bandit's final eval reward per algorithm and reward: every seed a dot, the mean with its 95%
    t-interval over seeds as an error bar."""
    rewards = list(dict.fromkeys(k.split("/")[0] for k in runs))
    names = list(dict.fromkeys(k.split("/")[1] for k in runs))
    fig, axes = plt.subplots(1, len(rewards), figsize=(4.5 * len(rewards), 3.4), squeeze=False)
    for ax, reward in zip(axes[0], rewards):
        for i, name in enumerate(names):
            values = runs[f"{reward}/{name}"]["final_reward"]
            m, half = mean_ci(values)
            ax.scatter([i + 0.15] * len(values), values, s=10, color=plt.cm.tab10(i), alpha=0.5)
            ax.errorbar([i - 0.15], [m], yerr=[[half], [half]] if half != float("inf") else None, fmt="o", capsize=3,
                        color=plt.cm.tab10(i))
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_title(f"{reward} reward", fontsize=10)
        ax.set_ylabel("final eval reward (dots: seeds; bar: 95% over seeds)")
    _save(fig, path)
