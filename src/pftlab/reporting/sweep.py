"""The hyperparameter sweep of the LLM task: one `dvc exp` per (algorithm, setting), selected on the
validation prompts (eval.validation_prompts, after and disjoint from the eval.num_prompts the report's
numbers come from).

    python -m pftlab.reporting.sweep queue dpo --grid lr=1e-5,3e-5,1e-4 --grid beta=0.1,0.3
    dvc queue start -j 1 && dvc queue status      # each experiment trains and evaluates that one algorithm
    python -m pftlab.reporting.sweep summarise    # metrics/sweep/summary.json: the table and each selection
    dvc repro report                              # the report shows the table and the rule

An experiment counts for algorithm `a` when it runs `a` alone (`algorithms=[a]`) and its params equal the
workspace's except under `algos.*` (read only by each algorithm's own stage) and the lists that decide which stages
exist. The rule: the setting with
the highest mean validation gold reward; the workspace's own setting competes too. `summarise` prints the
`algos.<a>.*` values to put in params.yaml; it never edits params.yaml itself.
"""
import argparse
import itertools
import json
import subprocess
import sys
from pathlib import Path

from pftlab.core.config import flatten
from pftlab.core.io import atomic_write_json
from pftlab.core.params import load_params, locked_stages, read_yaml
from pftlab.reporting.seeds import experiments

SWEEP_DIR = Path("metrics/sweep")
# Keys that only decide which stages exist: an experiment of one algorithm empties or narrows them.
STAGE_LISTS = ("algorithms", "training_seeds.algorithms", "training_seeds.seeds", "variants.algorithms", "variants.rewards")
RULE = "highest mean validation gold reward (eval.validation_prompts, disjoint from the evaluated prompts)"


def queue_commands(algorithm: str, grid: dict, present: dict) -> list:
    """One `dvc exp run --queue` command per point of the grid ({key: [values]} under algos.<algorithm>);
    `present`: the algorithm's keys in params.yaml now (DVC adds an absent one only as `+key=value`)."""
    keys = list(grid)
    commands = []
    for values in itertools.product(*(grid[k] for k in keys)):
        sets = [f"{'' if k in present else '+'}algos.{algorithm}.{k}={v}" for k, v in zip(keys, values)]
        commands.append(["dvc", "exp", "run", "--queue", "-S", f"algorithms=[{algorithm}]", "-S", "training_seeds.algorithms=[]",
                         "-S", "variants.algorithms=[]", *[x for s in sets for x in ("-S", s)]])
    return commands


def points(exp_show: list, current: dict) -> dict:
    """{algorithm: [{"experiment", "setting": {key: value}, "validation_gold_reward", ...}]} of the experiments
    that sweep one algorithm's own hyperparameters and nothing else."""
    flat_now = flatten(current)
    out = {}
    for name, params, metrics in experiments(exp_show):
        runs = params.get("algorithms") or []
        if len(runs) != 1:
            continue
        algorithm = runs[0]
        own = f"algos.{algorithm}."
        flat = flatten(params)
        # algos.<other>.* is read only by the other algorithm's stage, which this experiment does not run: a selection
        # already put in params.yaml for one algorithm keeps the others' sweeps counting.
        others = {k for k in set(flat) | set(flat_now) if not k.startswith(("algos.", *STAGE_LISTS))}
        if any(flat.get(k) != flat_now.get(k) for k in others):
            continue  # something else changed too: not a point of this sweep
        evaluation = metrics.get(f"metrics/eval/{algorithm}.json") or {}
        if "validation_gold_reward" not in evaluation:
            continue
        setting = {k[len(own):]: v for k, v in flat.items() if k.startswith(own)}
        out.setdefault(algorithm, []).append({"experiment": name, "setting": setting, **_scores(evaluation)})
    return out


def _scores(evaluation: dict) -> dict:
    keys = ("validation_gold_reward", "validation_gold_reward_ci95", "validation_kl_k1", "gold_reward", "kl_k1")
    return {k: evaluation[k] for k in keys if k in evaluation}


def summarise(found: dict, current: dict, workspace_evals: dict) -> dict:
    """The table per algorithm (the workspace's own setting included) and the selected setting by RULE."""
    summary = {"rule": RULE, "algorithms": {}}
    flat_now = flatten(current)
    for algorithm, rows in found.items():
        own = f"algos.{algorithm}."
        now = {k[len(own):]: v for k, v in flat_now.items() if k.startswith(own)}
        rows = list(rows)
        if "validation_gold_reward" in workspace_evals.get(algorithm, {}) and all(r["setting"] != now for r in rows):
            rows.append({"experiment": "workspace", "setting": now, **_scores(workspace_evals[algorithm])})
        rows.sort(key=lambda r: (-r["validation_gold_reward"], r["experiment"] != "workspace"))  # a tie keeps params.yaml
        summary["algorithms"][algorithm] = {"current": now, "selected": rows[0]["setting"], "rows": rows}
    return summary


EARLIER = "an earlier summary's: its experiments differ from params.yaml outside algos.<name> (other knobs moved since)"


def keep_earlier(summary: dict, path: Path) -> dict:
    """A new summary keeps the earlier summary's tables of algorithms it no longer finds (their experiments were
    run before other params changed), marked as such, so one algorithm's new sweep never erases another's."""
    if not path.exists():
        return summary
    for algorithm, entry in json.loads(path.read_text())["algorithms"].items():
        if algorithm not in summary["algorithms"]:
            summary["algorithms"][algorithm] = entry | {"kept": EARLIER}
            continue
        now = summary["algorithms"][algorithm]  # found again: its earlier rows stay listed, not selected from
        seen = {r["experiment"] for r in now["rows"]}
        now["rows"] += [r | {"earlier": True} for r in entry["rows"]
                        if r["experiment"] not in seen and r["experiment"] != "workspace"]
    return summary


def trained_as_now(algorithm: str, current: dict, stages: dict) -> bool:
    """Whether the workspace's policy of `algorithm` was trained with params.yaml's algos.<algorithm> (`stages`:
    dvc.lock's, which record what each stage ran with): after a selection is copied in and before `dvc repro`,
    the workspace's metrics belong to the old setting and must not compete under the new one."""
    locked = ((stages.get(f"policy@{algorithm}") or {}).get("params") or {}).get("params.yaml", {})
    key = f"algos.{algorithm}"
    return flatten(locked.get(key) or {}) == flatten((current.get("algos") or {}).get(algorithm) or {})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue one experiment per point of a grid")
    q.add_argument("algorithm")
    q.add_argument("--grid", action="append", default=[], help="key=v1,v2,... under algos.<algorithm> (repeatable)")
    sub.add_parser("summarise", help="read `dvc exp show --json`, write metrics/sweep/summary.json")
    args = parser.parse_args(argv)
    params = load_params("params.yaml")
    if args.command == "queue":
        if args.algorithm not in params["algorithms"]:
            sys.exit(f"queue: {args.algorithm!r} is not in params.yaml 'algorithms'")
        grid = {}
        for item in args.grid:
            key, _, values = item.partition("=")
            if not key or not values:
                sys.exit(f"--grid {item!r}: expected key=v1,v2,...")
            grid[key] = [read_yaml(v) for v in values.split(",")]
        commands = queue_commands(args.algorithm, grid, params.get(f"algos.{args.algorithm}") or {})
        for command in commands:
            subprocess.run(command, check=True)
        print(f"queued {len(commands)} experiments: dvc queue start -j 1")
        return
    out = subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], capture_output=True, text=True)  # any baseline
    if out.returncode != 0:
        sys.exit(f"`dvc exp show --json` failed: {out.stderr.strip()[-500:]}")
    stages = locked_stages()  # read once, not once per algorithm
    evals = {a: json.loads(Path(f"metrics/eval/{a}.json").read_text()) for a in params["algorithms"]
             if Path(f"metrics/eval/{a}.json").exists() and trained_as_now(a, params.tree, stages)}
    summary = summarise(points(json.loads(out.stdout), params.tree), params.tree, evals)
    summary = keep_earlier(summary, SWEEP_DIR / "summary.json")
    atomic_write_json(SWEEP_DIR / "summary.json", summary)
    for algorithm, s in summary["algorithms"].items():
        change = {k: v for k, v in s["selected"].items() if s["current"].get(k) != v}
        print(f"{algorithm}: {len(s['rows'])} settings; selected {s['selected']}"
              + (f" -> set in params.yaml: {', '.join(f'algos.{algorithm}.{k}: {v}' for k, v in change.items())}" if change else
                 " (params.yaml already holds it)"))


if __name__ == "__main__":
    main()
