"""Training seeds of the LLM task, for the report's seed-level claims: the pipeline's own
(`training_seeds`: stages seeds@<algorithm>, read by `pipeline_seed_runs`) and whole runs with
another `seed` collected from `dvc exp` (below).

    for s in 3 4 5 6; do dvc exp run --queue -S seed=$s; done && dvc queue start -j 1 && dvc queue status
    python -m pftlab.reporting.seeds      # writes metrics/seeds/seed_<s>.json, one per finished experiment
    dvc repro report            # the report now aggregates over every seed

An experiment counts when its params equal the workspace's except `seed`, so a sweep of another knob
is never mixed in. Only the per-policy summaries the claims need are kept (gold reward, KL, win rate).
"""
import json
import subprocess
import sys
from pathlib import Path

from pftlab.core.config import flatten
from pftlab.core.errors import DataError
from pftlab.core.io import atomic_write_json
from pftlab.core.params import load_params
from pftlab.core.paths import Task, seeds_stage
from pftlab.reporting.results import evaluation_of

SEEDS_DIR = Path("metrics/seeds")
KEYS = ("gold_reward", "kl_k1", "win_rate_vs_sft", "validation_gold_reward", "logp_chosen_change", "logp_rejected_change")


def summarise(metrics: dict) -> dict:
    """{gold reward: {policy: {gold_reward, kl_k1, win_rate_vs_sft}}} from one run's metrics files."""
    main_reward = metrics.get(Task().metrics("pairs"), {}).get("gold_reward")
    tasks = {}
    for path, values in metrics.items():
        found = evaluation_of(path)
        if found and found[0].seed is None and isinstance(values, dict) and "gold_reward" in values:
            task, policy = found
            tasks.setdefault(task.variant or main_reward, {})[policy] = {k: values[k] for k in KEYS if k in values}
    return tasks


def experiments(exp_show: list):
    """(name, params, metrics) of every finished experiment in `dvc exp show --json` output. Not the workspace,
    and not a queued, running or failed experiment: DVC shows those with the workspace's metrics."""
    def records(entry):
        if isinstance(entry, dict):
            data = entry.get("data")
            if entry.get("rev") != "workspace" and isinstance(data, dict) and data.get("rev") != "workspace":
                yield entry
            for exp in entry.get("experiments") or []:
                if (exp.get("executor") or {}).get("state") not in (None, "success"):
                    continue
                for rev in exp.get("revs") or []:
                    yield from records(rev)
    for entry in exp_show:
        for rec in records(entry):
            data = rec["data"]
            params = (data.get("params") or {}).get("params.yaml", {}).get("data") or {}
            metrics = {path: v["data"] for path, v in (data.get("metrics") or {}).items() if isinstance(v, dict) and "data" in v}
            yield rec.get("name") or rec.get("rev"), params, metrics


def collect(exp_show: list, current: dict) -> list:
    """Seed summaries of the experiments that differ from the `current` params only in `seed`."""
    without_seed = lambda tree: {k: v for k, v in flatten(tree).items() if k != "seed"}
    wanted, runs = without_seed(current), {}
    for name, params, metrics in experiments(exp_show):
        if "seed" not in params or params["seed"] == current.get("seed") or without_seed(params) != wanted:
            continue
        tasks = summarise(metrics)
        if tasks and params["seed"] not in runs:
            runs[params["seed"]] = {"seed": params["seed"], "experiment": name, "tasks": tasks}
    return [runs[s] for s in sorted(runs)]


def pipeline_seed_runs(algorithms: list, training_seeds: dict, reward: str, root=".") -> list:
    """The training seeds the pipeline ran for every policy of `algorithms` (params `training_seeds`), in the
    form of collected seed runs:
    `[{"seed": s, "tasks": {reward: {policy: {gold_reward, kl_k1, win_rate_vs_sft}}}}]`. A missing file is an
    error naming the stage that makes it."""
    runs = []
    for seed in training_seeds.get("seeds", []):
        task, policies = Task(seed=seed), {}
        for name in algorithms:
            path = Path(root) / task.metrics("evaluate", name)
            if not path.exists():
                raise DataError(f"{path} is missing: run `dvc repro {seeds_stage(name)}`")
            values = json.loads(path.read_text())
            policies[name] = {k: values[k] for k in KEYS if k in values}
        if policies:
            runs.append({"seed": seed, "experiment": "training_seeds", "tasks": {reward: policies}})
    return runs


def load_seed_runs(directory=SEEDS_DIR) -> list:
    runs = []
    for path in sorted(Path(directory).glob("seed_*.json")):
        try:
            run = json.loads(path.read_text())
            run["seed"], run["tasks"]  # noqa: B018 - the two keys the report reads
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DataError(f"{path}: not a seed summary ({e}); rerun `python -m pftlab.reporting.seeds`") from None
        runs.append(run)
    return runs


def write_seed_runs(runs: list, directory=SEEDS_DIR):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    keep = {f"seed_{r['seed']}.json" for r in runs}
    for stale in directory.glob("seed_*.json"):
        if stale.name not in keep:
            stale.unlink()
    for run in runs:
        atomic_write_json(directory / f"seed_{run['seed']}.json", run)


def main():
    current = load_params("params.yaml").tree
    try:
        out = subprocess.run(["dvc", "exp", "show", "--json"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"`dvc exp show --json` failed: {getattr(e, 'stderr', '') or e}")
    runs = collect(json.loads(out), current)
    write_seed_runs(runs)
    seeds = ", ".join(str(r["seed"]) for r in runs) or "none"
    print(f"{SEEDS_DIR}: other training seeds with the workspace's params: {seeds}. Next: dvc repro report")


if __name__ == "__main__":
    main()
