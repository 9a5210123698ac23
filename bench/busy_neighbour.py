"""How much slower a stage gets beside a busy neighbour, as ratios measured in one run.

    python bench/busy_neighbour.py                         # policy@dpo of the default run (needs its inputs: dvc repro)
    python bench/busy_neighbour.py --algorithm ppo
    python bench/busy_neighbour.py --command "python -m pytest -q -p no:xdist tests/test_losses.py"
    python bench/busy_neighbour.py --no-active-wait --out bench/results/busy_neighbour_tests.json \
        --command "python -m pytest -q -p no:xdist tests/test_pipeline.py"    # the suite's slowest file

The same command is timed three ways: alone; beside one spinning single-threaded process that the bench starts
and stops (what a test worker, a second experiment or any other job is to a stage); and beside it again with
OpenMP's own default wait policy (`OMP_WAIT_POLICY=ACTIVE`: idle threads spin), i.e. without what
`core/threads.py` sets. The default command runs the stage in a temporary copy of the repository's stage
inputs (`models/sft`, `models/reward_model`, `data/pairs`), so nothing in the workspace is written. Results go
to stdout and `--out` (default `bench/results/busy_neighbour.json`). Not a test: timings vary with load; run
it with nothing else running.
"""
import argparse
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_INPUTS = ["stages", "params.yaml", "models/sft", "models/reward_model", "data/pairs", "dvc.yaml"]
SPIN = "while True: pass"


def stage_copy(dest: Path) -> Path:
    """The files a policy stage reads, copied: the stage writes its outputs there, not in the workspace."""
    for name in STAGE_INPUTS:
        source = ROOT / name
        if not source.exists():
            sys.exit(f"busy_neighbour: {name} not found: run `dvc repro` (or `dvc pull`) first")
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, dest / name)
    return dest


def timed(command: list, cwd: Path, env: dict, neighbour: bool) -> float:
    spinner = subprocess.Popen([sys.executable, "-c", SPIN]) if neighbour else None
    try:
        start = time.perf_counter()
        run = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if run.returncode != 0:
        sys.exit(f"busy_neighbour: {' '.join(command)} failed:\n{run.stderr[-3000:]}")
    return seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algorithm", default="dpo", help="the policy stage to time (default command)")
    parser.add_argument("--command", help="time this shell-quoted command, run from the repository root, instead")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "busy_neighbour.json"))
    parser.add_argument("--no-active-wait", action="store_true",
                        help="skip the third timing (OpenMP's spinning default): for long commands")
    args = parser.parse_args()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "PFTLAB_OMP"))}
    base["PFTLAB_MLFLOW"] = "0"  # the stage's work, not the tracking store's
    ours = dict(base)  # pftlab's choice: core/threads.py sets PASSIVE and the thread count in the stage
    spinning = {**base, "OMP_WAIT_POLICY": "ACTIVE"}
    with tempfile.TemporaryDirectory() as tmp:
        if args.command:
            command, cwd, label = shlex.split(args.command), ROOT, args.command
        else:
            command, cwd = [sys.executable, "stages/policy.py", args.algorithm], stage_copy(Path(tmp))
            label = f"policy@{args.algorithm}"
        alone = timed(command, cwd, ours, neighbour=False)
        beside = timed(command, cwd, ours, neighbour=True)
        beside_active = None if args.no_active_wait else timed(command, cwd, spinning, neighbour=True)
    from pftlab.core.threads import thread_count, usable_cores

    result = {"machine": platform.processor() or platform.machine(), "cores": usable_cores(),
              "threads": thread_count(base), "command": label, "seconds_alone": round(alone, 2),
              "seconds_beside_neighbour": round(beside, 2),
              "seconds_beside_neighbour_active_wait": None if beside_active is None else round(beside_active, 2),
              "ratio_beside_neighbour": round(beside / alone, 3),
              "ratio_beside_neighbour_active_wait": None if beside_active is None else round(beside_active / alone, 3)}
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
