"""Resumable training: checkpoints outside the DVC outputs, and a clean stop on SIGINT / SIGTERM.

A training loop calls `checkpointer.step_done(step, snapshot)` after every optimizer step; it saves
`snapshot()` every `checkpoint.every_steps` steps and, when a stop signal arrived, saves and raises
`Interrupted`. A checkpoint lives in `checkpoints/<stage>/`, written atomically, and is resumed only if
it was written for the same params, inputs and code (its fingerprint); `run_stage` removes it once
the stage's outputs and metrics are written. Loading uses `torch.load(weights_only=True)`: a checkpoint
holds tensors and plain Python values only (numpy RNG states are stored as ints). What a snapshot holds is
built by core/train_state.py.

Torch-free at import: every stage imports this module (through core/stage.py), and only the training stages
save or load, so torch is imported where they do.
"""
import hashlib
import json
import os
import shutil
import signal
from pathlib import Path

from pftlab.core.errors import PftlabError
from pftlab.core.io import atomic_dir

ROOT = Path("checkpoints")
SOURCE = Path(__file__).resolve().parents[1]  # the whole package, subpackages included


class Interrupted(PftlabError):
    """A stop signal ended the stage after a final checkpoint; the exit status is 128 + signal number."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.exit_code = 128 + signum


def checkpoint_dir(stage: str) -> Path:
    return ROOT / stage.replace("/", "_")


def engine_dir(stage: str) -> Path:
    """Where DeepSpeed's own checkpoint of a stage goes (optimization.Updater), beside ours."""
    return checkpoint_dir(stage).with_name(checkpoint_dir(stage).name + ".deepspeed")


def remove_checkpoint(stage: str):
    shutil.rmtree(checkpoint_dir(stage), ignore_errors=True)
    shutil.rmtree(engine_dir(stage), ignore_errors=True)


def fingerprint(params: dict, inputs: list, script: str) -> str:
    """What must be equal for a checkpoint to be resumed: params read, input files, library and stage code."""
    h = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    files = [Path(script), *sorted(SOURCE.rglob("*.py"))]
    for path in map(Path, inputs):
        files += sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for path in files:
        h.update(str(path).encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


class Checkpointer:
    def __init__(self, stage: str, fingerprint: str, every_steps: int):
        self.stage, self.fingerprint, self.every_steps = stage, fingerprint, every_steps
        self.dir, self.last_step, self.signal = checkpoint_dir(stage), None, None
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._request_stop)

    def _request_stop(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now, the last checkpoint stays
            raise KeyboardInterrupt
        self.signal = signum

    def load(self):
        """The saved state if there is one for these params, inputs and code, else None (a stale one is removed)."""
        meta = self.dir / "meta.json"
        if not meta.exists():
            return None
        if json.loads(meta.read_text()).get("fingerprint") != self.fingerprint:
            print(f"{self.dir}: checkpoint of other params, inputs or code; starting over")
            remove_checkpoint(self.stage)
            return None
        import torch

        state = torch.load(self.dir / "state.pt", weights_only=True)
        self.last_step = state["step"]
        print(f"resuming stage '{self.stage}' from its checkpoint at step {state['step']} ({self.dir})")
        return state

    def save(self, state: dict):
        if int(os.environ.get("RANK", 0)) != 0:  # every rank holds the same state; rank 0 writes it
            self.last_step = state["step"]
            return
        import torch

        with atomic_dir(self.dir) as tmp:
            torch.save(state, tmp / "state.pt")
            (tmp / "meta.json").write_text(json.dumps({"fingerprint": self.fingerprint, "step": state["step"]}))
        self.last_step = state["step"]

    def step_done(self, step: int, snapshot):
        """After optimizer step number `step` (1-based count of steps taken): save if due or stopping."""
        if self.signal is not None or (self.every_steps and step % self.every_steps == 0):
            self.save(snapshot())
        if self.signal is not None:
            name = signal.Signals(self.signal).name
            raise Interrupted(f"stopped by {name} after step {step}; checkpoint saved in {self.dir} "
                              "(rerun the stage, e.g. `dvc repro`, to resume)", self.signal)

    def describe_last(self) -> str:
        return f"last good checkpoint: {self.dir} at step {self.last_step}" if self.last_step is not None else \
            "no checkpoint written yet"
