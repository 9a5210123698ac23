"""Resumable training: checkpoints outside the DVC outputs, and a clean stop on SIGINT / SIGTERM.

A training loop calls `checkpointer.step_done(step, snapshot)` after every optimizer step; it saves
`snapshot()` every `checkpoint.every_steps` steps and, when a stop signal arrived, saves and raises
`Interrupted`. A checkpoint lives in `checkpoints/<stage>/`, written atomically, and is resumed only if
it was written for the same params, inputs and code (its fingerprint); `run_stage` removes it once
the stage's outputs and metrics are written. Loading uses `torch.load(weights_only=True)`: a checkpoint
holds tensors and plain Python values only (numpy RNG states are stored as ints).
"""
import hashlib
import json
import os
import random
import shutil
import signal
from dataclasses import fields, is_dataclass
from pathlib import Path

import numpy as np
import torch

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
        state = torch.load(self.dir / "state.pt", weights_only=True)
        self.last_step = state["step"]
        print(f"resuming stage '{self.stage}' from its checkpoint at step {state['step']} ({self.dir})")
        return state

    def save(self, state: dict):
        if int(os.environ.get("RANK", 0)) != 0:  # every rank holds the same state; rank 0 writes it
            self.last_step = state["step"]
            return
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


# --- what a snapshot holds -------------------------------------------------------------------------
def rng_state(generator: torch.Generator = None) -> dict:
    """Every random stream a training loop may draw from (global torch / numpy / python, and its own)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": _plain(random.getstate()),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: dict, generator: torch.Generator = None):
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if generator is not None:
        generator.set_state(state["generator"])


def trainable_state(model) -> dict:
    """The parameters an optimizer updates (all of them, or a LoRA adapter only)."""
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict):
    own = dict(model.named_parameters())
    missing = [name for name, p in own.items() if p.requires_grad and name not in state]
    if missing or set(state) - set(own):
        raise PftlabError(f"checkpoint does not fit the model (missing {missing[:3]}, unexpected "
                          f"{sorted(set(state) - set(own))[:3]}); delete the checkpoint folder to start over")
    with torch.no_grad():
        for name, value in state.items():
            own[name].copy_(value)


def to_tree(x):
    """Dataclasses (batches, Sequences) as tagged dicts, so that a weights-only load can read them back."""
    if is_dataclass(x):
        return {"__dataclass__": type(x).__name__, **{f.name: to_tree(getattr(x, f.name)) for f in fields(x)}}
    if isinstance(x, dict):
        return {k: to_tree(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_tree(v) for v in x]
    return x


def from_tree(x, types: dict):
    if isinstance(x, dict):
        values = {k: from_tree(v, types) for k, v in x.items() if k != "__dataclass__"}
        return types[x["__dataclass__"]](**values) if "__dataclass__" in x else values
    if isinstance(x, list):
        return [from_tree(v, types) for v in x]
    return x


def _plain(x):
    return [_plain(v) for v in x] if isinstance(x, (list, tuple)) else x
