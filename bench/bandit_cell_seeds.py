"""One didactic-bandit cell over many seeds: where a cell's per-seed outcomes are two-peaked (offline REINFORCE on
the misaligned reward: some seeds find the peak, others settle on a mediocre sample), 20 seeds cannot place its
mean within +-0.1. This runs the cell on seeds 0..S-1 (one batched run) and prints the mean with its 95%
t-interval over seeds, and how far the means of 20-seed windows (0-19, 20-39, ...) scatter.

    python bench/bandit_cell_seeds.py                              # offline REINFORCE, misaligned, 100 seeds
    python bench/bandit_cell_seeds.py --method dpo --sampling on_policy --seeds 40

The stage's 20 seeds are the first window. Results go to stdout and `--out` (default
bench/results/bandit_cell_seeds.json). Not a test: nothing here asserts a number.
"""
import argparse
import json
import time
from pathlib import Path
from statistics import mean, stdev

import torch

from pftlab.core.io import atomic_write_json
from pftlab.core.params import load_params
from pftlab.core.stats import mean_ci
from pftlab.didactic import bandit

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--method", default="reinforce")
    parser.add_argument("--sampling", default="offline", choices=("offline", "on_policy"))
    parser.add_argument("--reward", default="misaligned", choices=("aligned", "misaligned"))
    parser.add_argument("--seeds", type=int, default=100)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bandit_cell_seeds.json"))
    args = parser.parse_args()

    torch.set_num_threads(1)  # as stage bandit runs a cell: then a seed's numbers do not depend on its neighbours
    cfg = load_params(ROOT / "params.yaml").config("bandit")
    reward = bandit.peaked_reward(getattr(cfg.rewards, args.reward), cfg.reward_width)
    hp = cfg.hyperparameters(args.method, args.sampling)
    start = time.perf_counter()
    final = bandit.run(args.method, reward, cfg, hp, list(range(args.seeds)),
                       **bandit.cell_schedule(cfg, args.method, args.sampling))["final_reward"]
    m, half = mean_ci(final)
    windows = [mean(final[i:i + 20]) for i in range(0, len(final) - 19, 20)]
    result = {"cell": f"{args.reward}/{args.method}/{args.sampling}", "seeds": f"0-{args.seeds - 1}",
              "final_reward_mean": round(m, 3), "ci95_over_seeds": [round(m - half, 3), round(m + half, 3)],
              "sd_over_seeds": round(stdev(final), 3), "min": round(min(final), 3), "max": round(max(final), 3),
              "means_of_20_seed_windows": [round(w, 3) for w in windows], "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
