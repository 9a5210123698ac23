"""The report's figures read at a glance: colour by family, line style by sampling, labelled points, losses in
small multiples, seed bands that are the 95% interval over training seeds."""
import matplotlib
import pytest

from pftlab.core.stats import mean_ci
from pftlab.reporting import figures

matplotlib.use("Agg")


def test_styles_encode_family_by_colour_and_sampling_by_line():
    names = ["sft", "pref_ft", "bon", "rloo", "ppo", "dpo", "online_dpo", "hypo"]
    styles = figures.algorithm_styles(names)
    assert styles["sft"]["color"] == "black"
    assert [styles[n]["linestyle"] for n in ("bon", "pref_ft", "hypo")] == ["-", "--", ":"]
    assert [styles[n]["marker"] for n in ("online_dpo", "dpo", "hypo")] == ["o", "s", "D"]
    colours = {n: styles[n]["color"] for n in names}
    assert len(set(colours.values())) == len(names)  # no two algorithms share a colour (10-colour cycles did)
    green = lambda c: c[1] > c[0] and c[1] > c[2]
    assert all(green(colours[n]) for n in ("dpo", "online_dpo", "hypo"))  # one family, one hue
    assert not green(colours["rloo"]) and not green(colours["pref_ft"])


def test_a_seed_band_is_the_95_percent_interval_over_seeds(tmp_path):
    import matplotlib.pyplot as plt

    runs = [[{"step": 0, "loss": 1.0}, {"step": 1, "loss": v}] for v in (0.5, 0.7, 0.9)]
    fig, ax = plt.subplots()
    figures.plot_curve(ax, runs, "loss", figures.algorithm_styles(["dpo"])["dpo"], "dpo")
    line = ax.lines[0]
    assert list(line.get_ydata()) == [1.0, 0.7] and line.get_label() == "dpo (3 seeds)"
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    mean, half = mean_ci([0.5, 0.7, 0.9])
    mean, half = mean_ci([0.5, 0.7, 0.9])  # step 1; at step 0 every seed is 1.0, so the band is that point
    assert abs(max(band) - (mean + half)) < 1e-9 and abs(min(band) - (mean - half)) < 1e-9
    plt.close(fig)


def test_learning_curves_and_labelled_reward_vs_kl_are_written(tmp_path):
    curve = [{"step": s, "loss": 1.0 / (s + 1), "proxy_reward": 0.1 * s, "kl_k1": 0.2 * s} for s in range(5)]
    figures.plot_learning_curves({"dpo": [curve, curve], "rloo": [curve]}, tmp_path / "a.png")
    figures.plot_losses({"dpo": [curve, curve], "rloo": [curve]}, tmp_path / "b.png")
    evals = {"sft": {"kl_k1": 0.0, "gold_reward": -30.0, "gold_reward_ci95": 1.0},
             "dpo": {"kl_k1": 2.0, "gold_reward": -20.0, "gold_reward_ci95": 2.0}}
    figures.plot_reward_vs_kl(evals, tmp_path / "c.png")
    assert all((tmp_path / f).stat().st_size > 5000 for f in ("a.png", "b.png", "c.png"))


def test_reward_vs_kl_labels_do_not_overlap():
    """Four policies within a few points of each other (as ppo, rwr, reinforce and online_dpo sit): their labels
    are moved apart, each at least a label's height from any other whose x range it shares."""
    from pftlab.reporting.figures import label_offsets

    points = {"ppo": (300.0, 200.0), "rwr": (305.0, 198.0), "reinforce": (310.0, 197.0), "online_dpo": (308.0, 195.0),
              "far": (100.0, 198.0)}
    offsets = label_offsets(points)
    labels = {n: (points[n][0] + dx, points[n][1] + dy) for n, (dx, dy) in offsets.items()}
    near = [n for n in labels if n != "far"]
    for i, a in enumerate(near):
        for b in near[i + 1:]:
            assert abs(labels[a][1] - labels[b][1]) >= 10.0 - 1e-9, (a, b, labels)
    assert offsets["far"] == (5, 4)  # alone: the plain offset
    assert all(y + dy + 10.0 <= 215.0 for (_, y), (_, dy) in zip(points.values(), label_offsets(points, top=215.0).values()))


def test_didactic_figures_of_the_coverage_and_token_bandit_stages_draw_the_seed_spread(tmp_path):
    import matplotlib.pyplot as plt

    drawn = []
    fill, errorbar = plt.Axes.fill_between, plt.Axes.errorbar
    plt.Axes.fill_between = lambda ax, x, low, high, **kw: drawn.append(("band", list(low), list(high))) or fill(ax, x, low, high, **kw)
    plt.Axes.errorbar = lambda ax, x, y, yerr=None, **kw: drawn.append(("bar", yerr)) or errorbar(ax, x, y, yerr=yerr, **kw)
    try:
        rows = [{"step": s, f"{m}_{q}": 1.0, f"{m}_{q}_ci95": 0.25} for s in (0, 10)
                for m in ("rlhf", "dpo", "hypo") for q in ("logp_preferred", "logp_best", "uncovered_mass", "kl")]
        merged = [{k: v for r in rows if r["step"] == s for k, v in r.items()} for s in (0, 10)]
        figures.plot_coverage({"linear": merged, "tabular": merged}, tmp_path / "coverage.png")
        assert len(drawn) == 12 and all(d == ("band", [0.75, 0.75], [1.25, 1.25]) for d in drawn)
        drawn.clear()
        claim6 = [{"step": s, "sgd_tabular_uniform_mean": 0.5 - 0.01 * s, "sgd_tabular_uniform_ci95": 0.1,
                   "sgd_tabular_uniform_min": 0.0, "sgd_tabular_uniform_max": 1.0} for s in (0, 10)]
        figures.plot_claim6(claim6, tmp_path / "claim6.png")
        (kind, low, high), = drawn
        assert low == pytest.approx([0.4, 0.3]) and high == pytest.approx([0.6, 0.5])
        drawn.clear()
        for r in claim6:  # one seed: no interval, so the min-max band
            r["sgd_tabular_uniform_ci95"] = float("inf")
        figures.plot_claim6(claim6, tmp_path / "claim6.png")
        assert drawn == [("band", [0.0, 0.0], [1.0, 1.0])]
        drawn.clear()
        values = [0.5, 0.7, 0.9]
        figures.plot_token_bandit({"misaligned/dpo": {"final_reward": values}}, tmp_path / "token_bandit.png")
        half = mean_ci(values)[1]
        assert drawn == [("bar", [[half], [half]])]
    finally:
        plt.Axes.fill_between, plt.Axes.errorbar = fill, errorbar
    assert all((tmp_path / f).stat().st_size > 5000 for f in ("coverage.png", "claim6.png", "token_bandit.png"))
