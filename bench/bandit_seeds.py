"""What batching the seeds of a didactic-bandit cell buys: time per (cell, seed) of one batched run of S
seeds against the plain loop that runs the same seeds one at a time, measured in one run on this machine.

    python bench/bandit_seeds.py                     # an on-policy cell of the default params, 20 seeds
    python bench/bandit_seeds.py --seeds 4 --collections 5

Both give the same numbers per seed (tests/test_bandit.py); this measures only the time. Results go to
stdout and `--out` (default bench/results/bandit_seeds.json). Not a test: nothing here asserts a time.
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch

from pftlab.core.io import atomic_write_json
from pftlab.core.params import load_params
from pftlab.didactic import bandit

ROOT = Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--method", default="ppo")
    parser.add_argument("--collections", type=int, default=10, help="of the on-policy cell (default params: 100)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "bandit_seeds.json"))
    args = parser.parse_args()

    cfg = load_params(ROOT / "params.yaml").config("bandit")
    hp = cfg.hyperparameters(args.method, "on_policy")
    schedule = bandit.cell_schedule(cfg, args.method, "on_policy") | {"collections": args.collections}
    reward, seeds = bandit.peaked_reward(70), list(range(args.seeds))
    bandit.run(args.method, reward, cfg, hp, seeds[:2], **schedule | {"collections": 1})  # warm-up
    start = time.perf_counter()
    bandit.run(args.method, reward, cfg, hp, seeds, **schedule)
    batched = (time.perf_counter() - start) / len(seeds)
    start = time.perf_counter()
    for seed in seeds:
        bandit.run(args.method, reward, cfg, hp, [seed], **schedule)
    plain = (time.perf_counter() - start) / len(seeds)
    result = {"method": args.method, "seeds": len(seeds), "steps": schedule["collections"] * schedule["steps_per_collection"],
              "seconds_per_cell_seed_batched": round(batched, 4), "seconds_per_cell_seed_one_at_a_time": round(plain, 4),
              "speedup": round(plain / batched, 2), "machine": platform.processor() or platform.machine(),
              "torch_threads": torch.get_num_threads()}
    print(json.dumps(result, indent=2))
    atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
