"""Stage bandit: Tajwar et al.'s didactic bandit as the authors ran it: every method offline and on-policy
on the aligned and misaligned rewards, every seed of a cell in one batched run, and the sample-reuse
study (metrics/didactic/bandit.json; curves, mean, 95% interval, min and max over seeds, in
metrics/curves/bandit_<reward>_<offline|on_policy>.csv, bandit_reuse.csv and bandit_reuse_final.csv)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from statistics import mean

import torch
from tqdm.auto import tqdm

from pftlab.core.io import write_csv
from pftlab.core.pipeline import BANDIT_CURVE, BANDIT_REUSE, BANDIT_REUSE_FINAL
from pftlab.core.stage import run_stage
from pftlab.core.stats import mean_ci
from pftlab.core.threads import thread_count
from pftlab.didactic import bandit


def wide_curves(curves: dict) -> list:
    """One row per logged step; per label its eval reward averaged over seeds, the half-width of its 95%
    t-interval over seeds, the seeds' min and max, and the samples drawn so far."""
    labels = list(curves)
    rows = []
    for i, point in enumerate(curves[labels[0]]):
        row = {"step": point["step"]}
        for label in labels:
            rewards = curves[label][i]["reward"]
            row |= {label: mean(rewards), f"{label}_ci95": mean_ci(rewards)[1], f"{label}_min": min(rewards),
                    f"{label}_max": max(rewards),
                    f"{label}_samples": curves[label][i]["samples"]}
        rows.append(row)
    return rows


def final_by_reuse(results: dict, reuse) -> list:
    """One row per sample reuse T: each method's final reward (mean over seeds, 95% t half-width) and the fresh
    samples it drew; one column per method, so `dvc plots` draws any preset's methods from `bandit.reuse.methods`."""
    rows = []
    for t in reuse.values:
        row = {"T": t}
        for m in reuse.methods:
            cell = results[f"misaligned/{m}/reuse_{t}"]
            row |= {m: mean(cell["final_reward"]), f"{m}_ci95": mean_ci(cell["final_reward"])[1],
                    f"{m}_fresh_samples": cell["samples"][0]}
        rows.append(row)
    return rows


def run_cell(job) -> dict:
    """One cell, every seed at once, on one thread (tensors of a few thousand numbers: the cells run side by
    side instead, one per core, and the numbers do not depend on how many do)."""
    torch.set_num_threads(1)
    cfg, rewards, reward_name, method, sampling = job
    reward = bandit.peaked_reward(rewards[reward_name], cfg.reward_width)
    return bandit.run(method, reward, cfg, cfg.hyperparameters(method, sampling), cfg.seeds,
                      **bandit.cell_schedule(cfg, method, sampling))


def main(p, tracker):
    cfg = p.config("bandit").check_methods(p.path)
    b = p["bandit"]
    cells = [(r, m, s) for r in b["rewards"] for m in cfg.methods for s in ("offline", "on_policy")]
    cells += [("misaligned", m, f"reuse_{t}") for m in cfg.reuse.methods for t in cfg.reuse.values]
    jobs = [(cfg, dict(b["rewards"]), *cell) for cell in cells]
    workers = min(len(jobs), thread_count())  # this process's cores (core/threads.py), one cell each
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        outs = list(tqdm(pool.map(run_cell, jobs), total=len(jobs), desc=f"bandit cells (all seeds at once, {workers} at a time)",
                         disable=None))
    results, curves = {}, {}
    for (reward_name, method, sampling), out in zip(cells, outs):
        key = f"{reward_name}/{method}/{sampling}"
        results[key] = {k: out[k] for k in ("final_reward", "final_kl", "final_entropy", "mean_reward", "samples")}
        if "/reuse_" in key:  # claim 2 reads reward against fresh samples, steps and compute
            results[key]["curve"] = [{k: point[k] for k in ("step", "samples", "reward")} for point in out["curve"]]
            schedule = bandit.cell_schedule(cfg, method, sampling)
            results[key]["collection_samples"] = schedule["train_contexts"] * schedule["samples_per_context"]
        curves[key] = out["curve"]
    for reward_name in b["rewards"]:
        for sampling in ("offline", "on_policy"):
            by_method = {m: curves[f"{reward_name}/{m}/{sampling}"] for m in cfg.methods}
            write_csv(BANDIT_CURVE.format(reward=reward_name, sampling=sampling), wide_curves(by_method))
    reuse = {f"{m}_T{t}": curves[f"misaligned/{m}/reuse_{t}"] for m in cfg.reuse.methods for t in cfg.reuse.values}
    write_csv(BANDIT_REUSE, wide_curves(reuse))
    write_csv(BANDIT_REUSE_FINAL, final_by_reuse(results, cfg.reuse))
    refs = [bandit.seed_reference(seed, cfg.reference) for seed in cfg.seeds]
    over_seeds = lambda f: mean(float(f(ref)) for ref in refs)  # the seeds' pi_ref differ (`reference: per_seed`)
    summary = {"reference": {"kind": cfg.reference, "mode_interior": [int(ref[5:95].argmax()) + 5 for ref in refs],
                             "mass_10_30": over_seeds(lambda ref: ref[10:31].sum()),
                             "mass_60_80": over_seeds(lambda ref: ref[60:81].sum())},
               "expected_reward_under_ref": {name: over_seeds(lambda ref: (ref * bandit.peaked_reward(peak, cfg.reward_width)).sum())
                                             for name, peak in b["rewards"].items()},
               "seeds": cfg.seeds, "statistic": "final_reward: mean exact eval reward over the last 5 steps, per seed",
               "reuse_sample_costs": list(cfg.reuse.sample_costs),
               "runs": results}
    tracker.log_metrics({f"{key.replace('/', '.')}.final_reward": mean(v["final_reward"]) for key, v in results.items()})
    return summary


if __name__ == "__main__":
    run_stage("bandit", main, seed_key=None)  # seeds: bandit.seeds
