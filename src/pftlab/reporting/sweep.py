"""The hyperparameter sweep of the LLM task: one `dvc exp` per (algorithm, setting), selected on the
validation prompts (eval.validation_prompts, after and disjoint from the eval.num_prompts the report's
numbers come from).

    python -m pftlab.reporting.sweep queue dpo --grid lr=1e-5,3e-5,1e-4 --grid beta=0.1,0.3
    dvc queue start -j 1 && dvc queue status      # each experiment trains and evaluates that one algorithm
    python -m pftlab.reporting.sweep summarise    # metrics/sweep/summary.json: the table and each selection
    python -m pftlab.reporting.sweep extend       # queue one step outward for each selection on a grid edge
    dvc repro report                              # the report shows the table, the rule and which are interior

An experiment counts for algorithm `a` when it runs `a` alone (`algorithms=[a]`) and its params equal the
workspace's except under `algos.*` (read only by each algorithm's own stage) and the lists that decide which stages
exist. The rule: the setting with
the highest mean validation gold reward; the workspace's own setting competes too. `summarise` prints the
`algos.<a>.*` values to put in params.yaml; it never edits params.yaml itself.

A selection is *interior* in a knob when the sweep tried a lower and a higher value of it at the selection's other
knobs. `extend` queues, for each scale knob (STEPPED) of a selection on an edge or never swept, the next value
outward on the 1-3-10 ladder, until the selection is interior or the knob's stated bound (BOUNDS) is reached.
"""
import argparse
import hashlib
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

from pftlab.core.config import flatten
from pftlab.core.io import atomic_write_json
from pftlab.core.params import load_params, locked_stages, read_yaml
from pftlab.core.paths import Task, seeds_stage
from pftlab.core.pipeline import metrics_of
from pftlab.reporting.results import evaluation_of
from pftlab.reporting.seeds import experiments

SWEEP_DIR = Path("metrics/sweep")
# Keys that only decide which stages exist: an experiment of one algorithm empties or narrows them
# (training_seeds.algorithms: the key of experiments queued before every policy had the training seeds).
STAGE_LISTS = ("algorithms", "training_seeds.algorithms", "training_seeds.seeds", "variants.algorithms", "variants.rewards")
# Knobs swept on a log scale (the 1, 3, 10, 30... ladder) and where the search stops outward.
BOUNDS = {"lr": (1e-6, 3e-3), "beta": (0.01, 3.0), "kl_coef": (0.001, 1.0), "lam": (1e-4, 1.0), "temperature": (0.1, 10.0)}
STEPPED = tuple(BOUNDS)
RULE = "highest mean validation gold reward (eval.validation_prompts, disjoint from the evaluated prompts)"


# Sections no sweep point's stages read: the didactic stages' (a point runs the LLM task only) and checkpointing
# (not a DVC param: it cannot change a result).
NOT_READ_BY_A_POINT = ("bandit.", "token_bandit.", "coverage.", "checkpoint.")


def context_of(tree: dict) -> str:
    """A fingerprint of the params every sweep point shares and reads (all but algos.*, the stage lists and the
    sections none of its stages read): rows of a summary written under another context were run with other data,
    SFT or evaluation, and stop counting."""
    shared = {k: v for k, v in flatten(tree).items() if not k.startswith(("algos.", *STAGE_LISTS, *NOT_READ_BY_A_POINT))}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:16]


def queue_commands(algorithm: str, grid: dict, present: dict, seeds: tuple = ()) -> list:
    """One `dvc exp run --queue` command per point of the grid ({key: [values]} under algos.<algorithm>);
    `present`: the algorithm's keys in params.yaml now (DVC adds an absent one only as `+key=value`); `seeds`:
    training seeds run too (stage seeds@<algorithm>), for a comparison that must not rest on one seed."""
    keys = list(grid)
    commands = []
    # the targets: that policy and its evaluation only (the summary reads that evaluation), and its seeds if asked
    targets = [f"evaluate@{algorithm}"] + ([f"seeds@{algorithm}"] if seeds else [])
    for values in itertools.product(*(grid[k] for k in keys)):
        sets = [f"{'' if k in present else '+'}algos.{algorithm}.{k}={v}" for k, v in zip(keys, values)]
        commands.append(["dvc", "exp", "run", *targets, "--queue", "-S", f"algorithms=[{algorithm}]",
                         "-S", f"training_seeds.seeds=[{','.join(str(s) for s in seeds)}]",
                         "-S", "variants.algorithms=[]", *[x for s in sets for x in ("-S", s)]])
    return commands


def points(exp_show: list, current: dict) -> dict:
    """{algorithm: [{"experiment", "setting": {key: value}, "validation_gold_reward", ...}]} of the experiments
    that sweep one algorithm's own hyperparameters and nothing else, then of the committed runs (each policy of a
    commit is a point at that commit's algos.<algorithm>, named "commit <sha>"; `summarise` keeps a commit's
    point only where no experiment ran its setting)."""
    context = context_of(current)
    out = {}
    for name, params, metrics in experiments(exp_show):
        runs = params.get("algorithms") or []
        # algos.<other>.* is read only by the other algorithm's stage, which this experiment does not run: a selection
        # already put in params.yaml for one algorithm keeps the others' sweeps counting.
        if len(runs) != 1 or context_of(params) != context:
            continue  # two algorithms at once, or something else changed too: not a point of this sweep
        row = _row(name, runs[0], params, metrics)
        if row:
            out.setdefault(runs[0], []).append(row)
    for rev, params, metrics in commits(exp_show):
        if context_of(params) != context:
            continue
        for algorithm in params.get("algorithms") or []:
            row = _row(f"commit {rev[:7]}", algorithm, params, metrics)
            if row:
                out.setdefault(algorithm, []).append(row | {"commit": True})
    return out


def commits(exp_show: list):
    """(rev, params, metrics) of each commit in `dvc exp show --json --all-commits` output (not the workspace)."""
    for entry in exp_show:
        data = entry.get("data")
        if entry.get("rev") == "workspace" or not isinstance(data, dict) or data.get("rev") == "workspace":
            continue
        params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
        metrics = {path: v["data"] for path, v in (data.get("metrics") or {}).items() if isinstance(v, dict) and "data" in v}
        yield entry.get("rev") or "", params, metrics


def _row(name: str, algorithm: str, params: dict, metrics: dict):
    evaluation = metrics.get(Task().metrics("evaluate", algorithm)) or {}
    if "validation_gold_reward" not in evaluation:
        return None
    own = f"algos.{algorithm}."
    setting = {k[len(own):]: v for k, v in flatten(params).items() if k.startswith(own)}
    seeds = {}
    for path, values in metrics.items():
        found = evaluation_of(path)
        if found and found[0].seed is not None and found[1] == algorithm and isinstance(values, dict) \
                and "gold_reward" in values:
            seeds[str(found[0].seed)] = _scores(values)
    return {"experiment": name, "setting": setting, **_scores(evaluation)} | ({"seeds": seeds} if seeds else {})


def seed_evaluations(algorithm: str) -> dict:
    """{training seed: its evaluation} of the runs of stage seeds@<algorithm> on disk."""
    found = {}
    for path in sorted(Path(metrics_of(seeds_stage(algorithm))).rglob("*.json")):
        owner = evaluation_of(path.as_posix())
        if owner and owner[0].seed is not None and owner[1] == algorithm:
            found[owner[0].seed] = json.loads(path.read_text())
    return found


def _scores(evaluation: dict) -> dict:
    keys = ("validation_gold_reward", "validation_gold_reward_ci95", "validation_kl_k1", "gold_reward", "kl_k1")
    return {k: evaluation[k] for k in keys if k in evaluation}


def summarise(found: dict, current: dict, workspace_evals: dict, workspace_seeds: dict | None = None) -> dict:
    """The table per algorithm (the workspace's own setting included) and the selected setting by RULE.
    `workspace_seeds`: {algorithm: {seed: evaluation}} of the workspace's training seeds."""
    summary = {"rule": RULE, "context": context_of(current), "algorithms": {}}
    flat_now = flatten(current)
    for algorithm in [*found, *(a for a in workspace_evals if a not in found)]:
        own = f"algos.{algorithm}."
        now = {k[len(own):]: v for k, v in flat_now.items() if k.startswith(own)}
        rows = [r for r in found.get(algorithm, []) if not r.get("commit")]
        evaluation = workspace_evals.get(algorithm, {})
        if "validation_gold_reward" in evaluation and all(r["setting"] != now for r in rows):
            seeds = {str(s): _scores(v) for s, v in ((workspace_seeds or {}).get(algorithm) or {}).items()}
            rows.append({"experiment": "workspace", "setting": now, **_scores(evaluation)} | ({"seeds": seeds} if seeds else {}))
        for row in found.get(algorithm, []):  # a commit counts only for a setting no experiment (nor the workspace) ran
            if row.get("commit") and all(r["setting"] != row["setting"] for r in rows):
                rows.append(row)
        rows.sort(key=lambda r: (-r["validation_gold_reward"], r["experiment"] != "workspace"))  # a tie keeps params.yaml
        summary["algorithms"][algorithm] = {"current": now, "selected": rows[0]["setting"], "rows": rows}
    return summary


EARLIER = "an earlier summary's: its experiments differ from params.yaml outside algos.<name> (other knobs moved since)"


def keep_earlier(summary: dict, path: Path) -> dict:
    """A new summary keeps what the earlier summary knew and `dvc exp show` no longer does (experiments removed
    with `dvc exp gc`, or never pulled into this clone). Under the same context (`context_of`) its rows still count
    as they did (the earlier workspace row too, as "earlier params.yaml", where its setting ran nowhere else), and
    an algorithm no longer found keeps its table. Under another context its rows are listed, marked `earlier`, and
    never selected from; a table no longer found is marked `kept`."""
    if not path.exists():
        return summary
    old = json.loads(path.read_text())
    same = old.get("context") is not None and old.get("context") == summary.get("context")
    for algorithm, entry in old["algorithms"].items():
        if algorithm not in summary["algorithms"]:
            summary["algorithms"][algorithm] = entry if same and "kept" not in entry else entry | {"kept": EARLIER}
            continue
        now = summary["algorithms"][algorithm]
        named = {r["experiment"] for r in now["rows"]}
        settings = [r["setting"] for r in now["rows"] if not r.get("earlier")]
        for r in entry["rows"]:
            if r["experiment"] == "workspace":
                if not same:
                    continue  # the old workspace under other params: nothing a later sweep can read
                r = r | {"experiment": "earlier params.yaml"}
            if r["experiment"] in named or (same and not r.get("earlier") and r["setting"] in settings):
                continue
            if r.get("commit") and r["setting"] in settings:
                continue
            now["rows"].append(r if same else r | {"earlier": True})
            named.add(r["experiment"])
            settings += [] if r.get("earlier") or not same else [r["setting"]]
        now["rows"].sort(key=lambda r: (bool(r.get("earlier")), -r["validation_gold_reward"], r["experiment"] != "workspace"))
        best = next((r for r in now["rows"] if not r.get("earlier")), None)
        if best:
            now["selected"] = best["setting"]
    return summary


def trained_as_now(algorithm: str, current: dict, stages: dict) -> bool:
    """Whether the workspace's policy of `algorithm` was trained with params.yaml's algos.<algorithm> (`stages`:
    dvc.lock's, which record what each stage ran with): after a selection is copied in and before `dvc repro`,
    the workspace's metrics belong to the old setting and must not compete under the new one."""
    locked = ((stages.get(f"policy@{algorithm}") or {}).get("params") or {}).get("params.yaml", {})
    key = f"algos.{algorithm}"
    return flatten(locked.get(key) or {}) == flatten((current.get("algos") or {}).get(algorithm) or {})


def ladder_step(value: float, up: bool) -> float:
    """The next value of the 1-3-10 ladder above (or below) `value`."""
    exponent = math.floor(math.log10(value))
    rungs = sorted(m * 10.0 ** e for e in range(exponent - 2, exponent + 3) for m in (1, 3))
    step = min(r for r in rungs if r > value * (1 + 1e-9)) if up else max(r for r in rungs if r < value * (1 - 1e-9))
    return float(f"{step:.1g}")


def grid_status(entry: dict, defaults: dict) -> dict:
    """{knob: {"tried": [values at the selection's other knobs], "selected": value, "status": ...}} for each stepped
    knob of an algorithm's selection. Status: interior, low edge, high edge, not swept (one value), or at bound.
    A row without a knob ran at `defaults` (lr: policy.lr). Earlier rows (other code) do not count."""
    value = lambda row, k: row["setting"].get(k, defaults.get(k))
    chosen = {k: entry["selected"].get(k, defaults.get(k)) for k in set(entry["selected"]) | set(defaults)}
    rows = [r for r in entry["rows"] if not r.get("earlier")]
    out = {}
    for knob in STEPPED:
        v = chosen.get(knob)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            continue
        same_rest = [r for r in rows if all(value(r, k) == chosen[k] for k in chosen if k != knob)]
        tried = sorted({value(r, knob) for r in same_rest if value(r, knob) is not None} | {v})
        low, high = BOUNDS[knob]
        if tried[0] < v < tried[-1]:
            status = "interior"
        elif len(tried) == 1:
            status = "not swept"
        else:
            status = "low edge" if v == tried[0] else "high edge"
            if (status == "low edge" and ladder_step(v, up=False) < low) or (status == "high edge" and ladder_step(v, up=True) > high):
                status += " (at bound)"
        out[knob] = {"tried": tried, "selected": v, "status": status}
    return out


def extension_points(status: dict) -> list:
    """[(knob, value)]: one step outward for each edge (both ways for a knob never swept), within BOUNDS."""
    points = []
    for knob, s in status.items():
        low, high = BOUNDS[knob]
        ways = {"low edge": [False], "high edge": [True], "not swept": [False, True]}.get(s["status"], [])
        points += [(knob, x) for x in (ladder_step(s["selected"], up) for up in ways) if low <= x <= high]
    return points


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    q = sub.add_parser("queue", help="queue one experiment per point of a grid")
    q.add_argument("algorithm")
    q.add_argument("--grid", action="append", default=[], help="key=v1,v2,... under algos.<algorithm> (repeatable)")
    q.add_argument("--seeds", default="", help="training seeds to run too, e.g. 1,2 (stage seeds@<algorithm>)")
    sub.add_parser("summarise", help="read `dvc exp show --json`, write metrics/sweep/summary.json")
    e = sub.add_parser("extend", help="queue one step outward for every selection on a grid edge (summary.json)")
    e.add_argument("algorithms", nargs="*", help="default: every algorithm of the summary")
    e.add_argument("--dry-run", action="store_true", help="print the commands, queue nothing")
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
        seeds = tuple(int(x) for x in args.seeds.split(",") if x.strip())
        commands = queue_commands(args.algorithm, grid, params.get(f"algos.{args.algorithm}") or {}, seeds)
        for command in commands:
            subprocess.run(command, check=True)
        print(f"queued {len(commands)} experiments: dvc queue start -j 1")
        return
    if args.command == "extend":
        summary = json.loads((SWEEP_DIR / "summary.json").read_text())
        queued = 0
        for algorithm in args.algorithms or list(summary["algorithms"]):
            entry = summary["algorithms"].get(algorithm)
            if entry is None or "kept" in entry:
                print(f"{algorithm}: no current sweep in {SWEEP_DIR / 'summary.json'}: queue a grid first")
                continue
            if entry["selected"] != entry["current"]:
                print(f"{algorithm}: skipped: params.yaml holds {entry['current']}, the sweep selected "
                      f"{entry['selected']}: set the selection first (see `summarise`)")
                continue
            present = params.get(f"algos.{algorithm}") or {}
            status = grid_status(entry, {"lr": params["policy.lr"]})
            for knob, value in extension_points(status):
                for command in queue_commands(algorithm, {knob: [value]}, present):
                    print(" ".join(command))
                    queued += 1
                    if not args.dry_run:
                        subprocess.run(command, check=True)
        print(f"{'would queue' if args.dry_run else 'queued'} {queued} experiments" + ("" if args.dry_run else ": dvc queue start -j 1"))
        return
    out = subprocess.run(["dvc", "exp", "show", "--json", "--all-commits"], capture_output=True, text=True)  # any baseline
    if out.returncode != 0:
        sys.exit(f"`dvc exp show --json` failed: {out.stderr.strip()[-500:]}")
    stages = locked_stages()  # read once, not once per algorithm
    trained = [a for a in params["algorithms"]
               if Path(Task().metrics("evaluate", a)).exists() and trained_as_now(a, params.tree, stages)]
    evals = {a: json.loads(Path(Task().metrics("evaluate", a)).read_text()) for a in trained}
    seeds = {a: seed_evaluations(a) for a in trained}
    summary = summarise(points(json.loads(out.stdout), params.tree), params.tree, evals, seeds)
    summary = keep_earlier(summary, SWEEP_DIR / "summary.json")
    atomic_write_json(SWEEP_DIR / "summary.json", summary)
    for algorithm, s in summary["algorithms"].items():
        change = {k: v for k, v in s["selected"].items() if s["current"].get(k) != v}
        print(f"{algorithm}: {len(s['rows'])} settings; selected {s['selected']}"
              + (f" -> set in params.yaml: {', '.join(f'algos.{algorithm}.{k}: {v}' for k, v in change.items())}" if change else
                 " (params.yaml already holds it)"))


if __name__ == "__main__":
    main()
