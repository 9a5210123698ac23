"""Stage coverage: Song et al.'s synthetic experiments, RLHF / DPO / HyPO with and without function
approximation over several seeds (metrics/didactic/coverage.json, curves in metrics/curves/coverage_<kind>.csv)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
from statistics import mean

import torch
from tqdm.auto import tqdm

from pftlab.core.io import write_csv
from pftlab.core.pipeline import CLAIM6_CASES, COVERAGE_CLAIM6, COVERAGE_CURVE, COVERAGE_PROBLEMS
from pftlab.core.stage import run_stage
from pftlab.core.stats import mean_ci
from pftlab.didactic import coverage, coverage_mass

QUANTITIES = ("logp_preferred", "logp_best", "uncovered_mass", "kl", "reward")


def main(p, tracker):
    torch.set_num_threads(1)  # vectors of 100 numbers: threads cost more than they give
    c = p["coverage"]
    hp = {k: c[k] for k in ("steps", "rm_steps", "lr", "beta", "lam", "batch_size", "preferred_subset")}
    results, curves = {}, {}
    jobs = [(kind, method) for kind in COVERAGE_PROBLEMS for method in coverage.METHODS]
    for kind, method in tqdm(jobs, desc="coverage runs (every seed at once)", disable=None):
        problems = [coverage.make_problem(kind, seed, pairs=c["pairs"]) for seed in c["seeds"]]
        key = f"{kind}/{method}"
        curves[key] = coverage.train_seeds(problems, method, hp)
        for curve in curves[key]:
            _record(results, key, curve, c)
    for kind in COVERAGE_PROBLEMS:
        rows = []
        for i, point in enumerate(curves[f"{kind}/rlhf"][0]):
            row = {"step": point["step"]}
            for method in coverage.METHODS:
                for q in ("logp_preferred", "logp_best", "uncovered_mass", "kl"):
                    # the mean over seeds and its 95% t half-width (the figure's band)
                    row[f"{method}_{q}"], row[f"{method}_{q}_ci95"] = mean_ci([run[i][q] for run in curves[f"{kind}/{method}"]])
            rows.append(row)
        write_csv(COVERAGE_CURVE.format(problem=kind), rows)
    tracker.log_metrics({f"{k.replace('/', '.')}.{q}": mean(v) for k, r in results.items() for q, v in r.items()})
    mass = coverage_mass.claim6_table(c, CLAIM6_CASES)
    write_csv(COVERAGE_CLAIM6, claim6_rows(mass))
    for entry in mass.values():
        del entry["curve"]  # in the csv
    return {"claim6_steps": c["claim6"]["steps"], "seeds": c["seeds"], "epochs": c["steps"] * c["batch_size"] / c["pairs"], "runs": results,
            "uncovered_mass_by_case": mass}


def _record(results: dict, key: str, curve: list, c: dict) -> None:
    """One seed's start, first-epoch and end values of every quantity, appended to results[key]."""
    # the first logged point after one pass over the pairs: how far each method drifts in later epochs
    epoch1 = next((x for x in curve if x["step"] * c["batch_size"] >= c["pairs"]), curve[-1])
    runs = results.setdefault(key, {f"{q}_{when}": [] for q in QUANTITIES for when in ("start", "epoch1", "end")})
    for q in QUANTITIES:
        runs[f"{q}_start"].append(curve[0][q])
        runs[f"{q}_epoch1"].append(epoch1[q])
        runs[f"{q}_end"].append(curve[-1][q])


def claim6_rows(mass: dict) -> list:
    """One row per logged step: each case's mean uncovered mass over seeds, its 95% half-width, min and max."""
    cases = list(mass)
    rows = []
    for i, step in enumerate(mass[cases[0]]["curve"]["step"]):
        row = {"step": step}
        for case in cases:
            for stat in ("mean", "ci95", "min", "max"):
                row[f"{case.replace('/', '_')}_{stat}"] = mass[case]["curve"][stat][i]
        rows.append(row)
    return rows


if __name__ == "__main__":
    run_stage("coverage", main, seed_key=None)  # seeds: coverage.seeds
