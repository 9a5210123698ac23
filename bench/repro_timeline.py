"""Where a `dvc repro` spends its time: the stages' own work, their start-up, and what DVC adds around them.

    python bench/repro_timeline.py                 # runs `dvc repro` here (any arguments are passed on to it)
    python bench/repro_timeline.py -s policy@dpo --force

Every stage reports its start-up (process start to its first line of work: Python and imports) and its work
in its metrics file (`startup_seconds`, `seconds`; core/stage.py). This runs `dvc repro`, timestamps each line
of its output, and splits the wall time into the stages' work, their start-up, and the rest: DVC's own work
(reading the pipeline, hashing dependencies and outputs, writing dvc.lock, caching) and process exits. Results
go to stdout and `--out` (default `bench/results/repro_timeline.json`), with one row per stage that ran. Run it
with nothing else running: a busy neighbour moves every number (bench/busy_neighbour.py).
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DONE = re.compile(r"stage '(?P<name>[^']+)' done in [0-9.]+s -> (?P<metrics>\S+)")
RUNNING = re.compile(r"Running stage '(?P<name>[^']+)'")


def timeline(lines, read_metrics) -> dict:
    """Split `(seconds since start, line)` pairs of a repro's output, ending at `wall`, into work / start-up / rest."""
    stages, wall = [], 0.0
    for at, line in lines:
        wall = max(wall, at)
        if RUNNING.search(line):
            stages.append({"stage": RUNNING.search(line)["name"], "started": round(at, 2)})
        elif DONE.search(line):
            metrics = read_metrics(DONE.search(line)["metrics"])
            stages.append({"stage": DONE.search(line)["name"], "done": round(at, 2),
                           "startup_seconds": metrics.get("startup_seconds", float("nan")),
                           "seconds": metrics.get("seconds", float("nan"))})
    done = [s for s in stages if "done" in s]  # runs: a seeds@ stage reports one per seed and kind
    ran = sum("started" in s for s in stages) or len(done)  # DVC stages (processes)
    work = sum(s["seconds"] for s in done)
    startup = sum(s["startup_seconds"] for s in done)
    return {"wall_seconds": round(wall, 1), "stages_run": ran, "runs": len(done), "work_seconds": round(work, 1),
            "startup_seconds": round(startup, 1), "dvc_and_exit_seconds": round(wall - work - startup, 1),
            "share_outside_work": round(1 - work / wall, 3) if wall else float("nan"),
            "per_stage_outside_work": round((wall - work) / ran, 1) if ran else float("nan"),
            "stages": done}


def repository_root(start: Path) -> Path:
    """The DVC repository holding `start`, where DVC runs stages and their printed paths start."""
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    sys.exit(f"repro_timeline: {start} is not inside a DVC repository")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "repro_timeline.json"))
    args, dvc_args = parser.parse_known_args()
    dvc, repo = Path(sys.executable).parent / "dvc", repository_root(Path.cwd())
    start, lines = time.perf_counter(), []
    with subprocess.Popen([str(dvc), "repro", *dvc_args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as run:
        for line in run.stdout:
            lines.append((time.perf_counter() - start, line.rstrip()))
            print(f"{lines[-1][0]:8.1f}  {lines[-1][1]}", flush=True)
    lines.append((time.perf_counter() - start, ""))
    if run.returncode != 0:
        sys.exit(f"repro_timeline: dvc repro failed with status {run.returncode}")
    result = timeline(lines, lambda path: json.loads((repo / path).read_text()))
    print(json.dumps({k: v for k, v in result.items() if k != "stages"}, indent=2))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
