"""What a training checkpoint holds (core/checkpoint.py saves it): every RNG stream, the trainable weights, and
dataclasses as tagged trees that a weights-only load can read back. A module of its own because it needs torch:
only the training loops import it, so the stages that do not train neither load torch nor rerun when it changes.
"""
import random
from dataclasses import fields, is_dataclass

import numpy as np
import torch

from pftlab.core.errors import PftlabError


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
