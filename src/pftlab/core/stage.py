"""What every stage entry point shares: params check, seeding, MLflow run, timing, clean errors, checkpoints."""
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path

from pftlab.core.checkpoint import Checkpointer, checkpoint_dir, fingerprint, remove_checkpoint
from pftlab.core.errors import PftlabError
from pftlab.core.io import atomic_write_json, check_writable
from pftlab.core.params import Params, load_params
from pftlab.core.pipeline import metrics_of, params_of
from pftlab.core.tracking import Tracker

_runs_started = []  # the stages (or seed runs) this process has started: the first carries its start-up


def seed_everything(seed: int):
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def process_age() -> float:
    """Seconds since this process started (Linux /proc; NaN elsewhere): what a stage spends starting Python and
    importing its libraries before it runs, reported per stage as `startup_seconds`."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):
        return float("nan")


def run_stage(name: str, main, seed_key="seed", params_path="params.yaml", models=(), results_prefix=None,
              keep_checkpoint=False):
    """Run `main(params, tracker) -> metrics dict`; write the metrics (plus wall time) atomically.

    `name` is the stage (or seed run) as core/pipeline.py names it; `main` gets the params it declares there,
    and reading any other key ends the stage with an error; the metrics go to the file it declares.

    `models`: the model directories the stage writes, logged to MLflow as models; `results_prefix`: the
    metrics also go, under this prefix, to the run of the policy the stage belongs to (held-out results).
    A PftlabError (bad param, bad data) ends the stage with its one-line message and exit status 1.
    A process may run several (stage seeds@: one run per training seed): each is a run of its own, the first
    carries the process's start-up, and `keep_checkpoint` leaves its checkpoint for the caller to remove once
    every run is written (DVC reruns the whole stage: a finished run then resumes at its end).
    """
    start, startup = time.time(), (process_age() if not _runs_started else 0.0)
    try:
        sections, metrics_path = params_of(name), metrics_of(name)
        _runs_started.append(name)
        check_writable(metrics_path)
        check_writable(checkpoint_dir(name))
        params = load_params(params_path).check(*sections).check_stage_lists()
        declared = params.declared_only(name, sections)
        if seed_key is not None:  # None: the stage seeds each of its runs itself
            seed_everything(declared[seed_key])
        # Under a multi-process launcher, rank 0 tracks and writes. (Read here rather than from optimization.py,
        # whose transformers imports would add seconds to every stage that does not train.)
        main_process = int(os.environ.get("RANK", 0)) == 0
        with Tracker(name, params.section(*sections), enabled=main_process, all_params=params.tree) as tracker:
            metrics = main(declared, tracker)
            if not main_process:
                return
            metrics["seconds"] = round(time.time() - start, 2)
            metrics["startup_seconds"] = round(startup, 2)
            torch = sys.modules.get("torch")  # only where the stage used it: light stages never import it
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                metrics["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            metrics = without_nonfinite(metrics, name)
            tracker.log_metrics({f"final/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                                to_policy_run=False)
            if results_prefix:
                tracker.log_results({f"{results_prefix}{k}": v for k, v in metrics.items()})
            atomic_write_json(metrics_path, metrics)
            tracker.log_artifact(metrics_path)
            for path in models:
                tracker.log_model(path)
        if not keep_checkpoint:
            remove_checkpoint(name)  # every output is written; DVC commits them when this process exits
    except PftlabError as err:
        print(f"error in stage '{name}': {err}", file=sys.stderr)
        sys.exit(getattr(err, "exit_code", 1))
    print(f"stage '{name}' done in {time.time() - start:.1f}s -> {metrics_path}")


def without_nonfinite(metrics: dict, stage: str) -> dict:
    """NaN or infinity is not JSON and not a result: written as null (no value), with a warning naming the key."""
    def clean(value, key):
        if isinstance(value, float) and not math.isfinite(value):
            warnings.warn(f"stage '{stage}': metric '{key}' is {value} (no value): written as null", stacklevel=3)
            return None
        if isinstance(value, dict):
            return {k: clean(v, f"{key}.{k}") for k, v in value.items()}
        return value
    return {k: clean(v, k) for k, v in metrics.items()}


def stage_checkpointer(params, inputs: list) -> Checkpointer:
    """A checkpointer for the stage whose params view `params` is (`run_stage` hands it to the stage), valid only
    for its declared params, these input paths and the code. `checkpoint.every_steps` is read here and
    deliberately not a DVC param of any stage: it cannot change a number (a resumed run equals an uninterrupted
    one), so changing it must not rerun training."""
    whole = Params(params.tree, params.path)  # `checkpoint` is no stage's declared param (above)
    every = whole.check("checkpoint")["checkpoint.every_steps"] if whole.get("checkpoint") is not None else 0
    return Checkpointer(params.stage, fingerprint(params.section(*params.declared), inputs, sys.argv[0]), every)
