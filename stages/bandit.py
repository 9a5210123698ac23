"""Stage bandit: Tajwar et al.'s didactic bandit, every method offline and on-policy on the aligned and
misaligned rewards over several seeds, and the sample-reuse ablation (metrics/didactic/bandit.json,
mean curves in metrics/curves/bandit_<reward>.csv and bandit_reuse.csv)."""
from statistics import mean

import torch
from tqdm.auto import tqdm

from pftlab.core.io import write_csv
from pftlab.core.stage import run_stage
from pftlab.didactic import bandit


def mean_curves(runs: dict, x: str) -> list:
    """Wide table: one row per logged step; per run label, the eval reward and the samples drawn so far,
    averaged over seeds."""
    labels = list(runs)
    rows = []
    for i, point in enumerate(runs[labels[0]][0]):
        row = {x: point[x]}
        for label in labels:
            row[label] = mean(seed_curve[i]["reward"] for seed_curve in runs[label])
            row[f"{label}_samples"] = mean(seed_curve[i]["samples"] for seed_curve in runs[label])
        rows.append(row)
    return rows


def main(p, tracker):
    torch.set_num_threads(1)  # tensors of a few thousand numbers: threads cost more than they give
    b = p["bandit"]
    hp = {k: b[k] for k in ("train_contexts", "eval_contexts", "fit_steps", "lr", "beta", "min_reward_gap", "clip",
                            "kl_coef", "entropy_coef", "rwr_temperature", "rwr_max_weight")}
    jobs = [(r, m, s, seed) for r in b["rewards"] for m in b["methods"] for s in ("offline", "on_policy") for seed in b["seeds"]]
    jobs += [("misaligned", m, f"reuse_{t}", seed) for m in b["reuse_methods"] for t in b["reuse_values"] for seed in b["seeds"]]
    results, curves = {}, {}
    for reward_name, method, sampling, seed in tqdm(jobs, desc="bandit runs", disable=None):
        reward = bandit.peaked_reward(b["rewards"][reward_name], b["reward_width"])
        if sampling.startswith("reuse_"):  # N*T samples per collection, steps/T collections: totals fixed
            t = int(sampling.split("_")[1])
            curve = bandit.run(method, reward, "on_policy", hp, seed, b["steps"], t, b["samples_per_context"] * t,
                               group_size=b["samples_per_context"])
        else:
            curve = bandit.run(method, reward, sampling, hp, seed, b["steps"], b["reuse"], b["samples_per_context"])
        key = f"{reward_name}/{method}/{sampling}"
        curves.setdefault(key, []).append(curve)
        results.setdefault(key, {"final_reward": [], "final_kl": [], "mean_reward": [], "samples": []})
        results[key]["final_reward"].append(curve[-1]["reward"])
        results[key]["final_kl"].append(curve[-1]["kl"])
        results[key]["mean_reward"].append(mean(row["reward"] for row in curve))  # area under the curve: speed
        results[key]["samples"].append(curve[-1]["samples"])
    for reward_name in b["rewards"]:
        runs = {f"{m}_{s}": curves[f"{reward_name}/{m}/{s}"] for m in b["methods"] for s in ("offline", "on_policy")}
        write_csv(f"metrics/curves/bandit_{reward_name}.csv", mean_curves(runs, "step"))
    reuse_runs = {f"{m}_T{t}": curves[f"misaligned/{m}/reuse_{t}"] for m in b["reuse_methods"] for t in b["reuse_values"]}
    write_csv("metrics/curves/bandit_reuse.csv", mean_curves(reuse_runs, "step"))
    ref = bandit.reference_distribution()
    summary = {"reference": {"mode_interior": int(ref[5:95].argmax()) + 5, "mass_10_30": float(ref[10:31].sum()),
                             "mass_60_80": float(ref[60:81].sum())},
               "expected_reward_under_ref": {name: float((ref * bandit.peaked_reward(peak, b["reward_width"])).sum())
                                             for name, peak in b["rewards"].items()},
               "seeds": b["seeds"], "runs": results}
    tracker.log_metrics({f"{key.replace('/', '.')}.final_reward": mean(v["final_reward"]) for key, v in results.items()})
    return summary


if __name__ == "__main__":
    run_stage("bandit", ["bandit"], main, "metrics/didactic/bandit.json", seed_key=None)  # seeds: bandit.seeds
