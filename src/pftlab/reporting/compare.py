"""One table to compare runs at a glance: the workspace, the commits and every `dvc exp`, per algorithm, held-out
gold reward with its 95% interval over the evaluation prompts, KL to pi_ref and win rate against SFT, beside
only the params that differ between the runs.

    python -m pftlab.reporting.compare                  # the workspace and the experiments of this commit
    python -m pftlab.reporting.compare --all-commits    # and of every commit
    python -m pftlab.reporting.compare --md             # as a markdown table

An experiment is shown for the algorithms whose numbers differ from the workspace's: a queued sweep point reruns one
policy and carries the others over unchanged. The stage lists (`algorithms`, `training_seeds.seeds`, `variants.*`)
choose which stages run, never a number, so they are not listed among the params that differ.
"""
import argparse
import json
import subprocess
import sys

from pftlab.core.config import flatten
from pftlab.core.errors import DataError
from pftlab.core.paths import Task
from pftlab.reporting.results import evaluation_of
from pftlab.reporting.seeds import experiments

STAGE_LISTS = ("algorithms", "training_seeds.", "variants.")
SHOWN = ("gold_reward", "gold_reward_ci95", "kl_k1", "win_rate_vs_sft")
COLUMNS = ("run", "params that differ", "algorithm", "gold reward [95% CI over prompts]", "KL k1", "win rate vs SFT")


def _evals(metrics: dict) -> dict:
    """{algorithm: its evaluation metrics} of one run's metrics files ({path: data}); a null gold reward is no row."""
    evals = {}
    for path, data in metrics.items():
        found = evaluation_of(path)
        if found and found[0] == Task() and isinstance(data, dict) and isinstance(data.get("gold_reward"), (int, float)):
            evals[found[1]] = data
    return evals


def runs(exp_show: list) -> list:
    """[(name, flat params, {algorithm: eval metrics})] of the workspace, each commit and each finished experiment in
    `dvc exp show --json` output (a queued, running or failed experiment has no numbers of its own)."""
    commits = {entry.get("name") or entry.get("rev"): entry.get("rev", "") for entry in exp_show}  # branch -> sha
    found = [("workspace", *wanted) for wanted in _workspace(exp_show)]
    found += [(f"commit {commits[name][:7]}" if name in commits else name, params, metrics)
              for name, params, metrics in experiments(exp_show)]
    out = [(name, flatten(params), _evals(metrics)) for name, params, metrics in found]
    return [run for run in out if run[1] or run[2]]


def _workspace(exp_show: list):
    """(params, metrics) of the workspace row, the one `seeds.experiments` leaves out."""
    for entry in exp_show:
        if entry.get("rev") == "workspace":
            data = entry.get("data") or {}
            yield ((data.get("params") or {}).get("params.yaml", {}).get("data") or {},
                   {path: v["data"] for path, v in (data.get("metrics") or {}).items() if isinstance(v, dict) and "data" in v})


def differing(all_params: list) -> list:
    """The keys whose value is not the same in every run (absent counts as a value), stage lists left out."""
    keys = sorted({k for p in all_params for k in p if not k.startswith(STAGE_LISTS)})
    return [k for k in keys if len({json.dumps(p.get(k), sort_keys=True) for p in all_params}) > 1]


def _gold(m: dict) -> str:
    g, half = m["gold_reward"], m.get("gold_reward_ci95")
    return f"{g:.2f}" + (f" [{g - half:.2f}, {g + half:.2f}]" if isinstance(half, (int, float)) else "")


def _number(m: dict, key: str, digits: int) -> str:
    value = m.get(key)
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) else "-"


def _shown(m: dict) -> tuple:
    """The numbers a row shows (not wall-clock fields): what decides whether a run differs from the workspace."""
    return tuple(m.get(k) for k in SHOWN)


def table(all_runs: list) -> list:
    """Rows of COLUMNS: every algorithm of the workspace (or of the first run), then for each other run the
    algorithms whose numbers differ from those (`same as workspace` when none does)."""
    if not all_runs:
        return []
    keys = differing([p for _, p, _ in all_runs])
    base_name, _, base = next((r for r in all_runs if r[0] == "workspace"), all_runs[0])
    rows = []
    for name, params, evals in sorted(all_runs, key=lambda r: r[0] != base_name):
        knobs = ", ".join(f"{k}={params[k]}" for k in keys if k in params) or "-"
        shown = [a for a in evals if name == base_name or _shown(evals[a]) != _shown(base.get(a) or {})]
        if not shown:
            rows.append((name, knobs, f"(same numbers as {base_name})", "", "", ""))
        for i, algorithm in enumerate(shown):
            m = evals[algorithm]
            rows.append((name if i == 0 else "", knobs if i == 0 else "", algorithm, _gold(m),
                         _number(m, "kl_k1", 3), _number(m, "win_rate_vs_sft", 2)))
    return rows


def render(rows: list, markdown: bool = False) -> str:
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    widths = [max(len(str(x)) for x in col) for col in zip(COLUMNS, *rows)]
    fmt = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(COLUMNS), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def exp_show(all_commits: bool) -> list:
    args = ["dvc", "exp", "show", "--json", "--hide-queued", "--hide-failed", *(["--all-commits"] if all_commits else [])]
    out = subprocess.run(args, capture_output=True, text=True)
    if out.returncode != 0:
        raise DataError(f"`{' '.join(args)}` failed: {(out.stderr.strip().splitlines() or ['no message'])[-1]}")
    return json.loads(out.stdout or "[]")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all-commits", action="store_true", help="the experiments of every commit, not only HEAD's")
    parser.add_argument("--md", action="store_true", help="a markdown table")
    args = parser.parse_args(argv)
    try:
        rows = table(runs(exp_show(args.all_commits)))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render(rows, args.md) if rows else "no run with evaluation metrics yet: run `dvc repro` first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
