"""Typed params: one frozen dataclass per params.yaml section, each field with the rule it must obey.

A section's dataclass lives in a torch-free `config.py` beside the code that reads it (`lm/config.py`,
`training/config.py`, `didactic/config.py`, `algorithms/hyperparameters.py`), so checking params imports
no torch and a bad value is refused in well under a second. `knob(rule, want)` declares a field: `rule`
says which values are allowed, `want` says so in the error message (the common pairs are named below,
e.g. `knob(*POS_INT)`); `default=None` marks a key a preset may set and the CPU default leaves out. A
nested dataclass is a nested mapping.
"""
import dataclasses
import difflib
import math
import typing

from pftlab.core.errors import ParamError

REQUIRED = dataclasses.MISSING


# --- rules -----------------------------------------------------------------------------------------
def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def positive(v) -> bool:
    return is_number(v) and v > 0


def nonneg(v) -> bool:
    return is_number(v) and v >= 0


def pos_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def nonneg_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def fraction_open(v) -> bool:
    return is_number(v) and 0 < v < 1


def fraction_closed(v) -> bool:
    return is_number(v) and 0 <= v <= 1


def is_bool(v) -> bool:
    return isinstance(v, bool)


def text(v) -> bool:
    return isinstance(v, str) and v.strip() != ""


def one_of(names):
    return lambda v: isinstance(v, str) and v in names


def list_of(rule, allowed=None, empty=False):
    return lambda v: (isinstance(v, list) and (empty or len(v) > 0) and all(rule(x) for x in v)
                      and (allowed is None or set(v) <= set(allowed)))


def knob(rule, want: str, default=REQUIRED, help: str = ""):
    """A params key: its rule, the words for what it allows, and a default (None: optional, absent = off)."""
    return dataclasses.field(default=default, metadata={"rule": rule, "want": want, "help": help})


# The common rules with their words, each written once: `knob(*POS_INT)`, `knob(*POS_INT, None)` where optional.
POS_INT = (pos_int, "a positive integer")
NONNEG_INT = (nonneg_int, "an integer >= 0")
INT_AT_LEAST_2 = (lambda v: pos_int(v) and v >= 2, "an integer >= 2")
POSITIVE = (positive, "a number > 0")
NONNEG = (nonneg, "a number >= 0")
FRACTION_OPEN = (fraction_open, "a number in (0, 1)")
FRACTION_CLOSED = (fraction_closed, "a number in [0, 1]")
FRACTION_BELOW_1 = (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")
BOOL = (is_bool, "true or false")
TEXT = (text, "a non-empty string")
SEEDS = (list_of(nonneg_int), "a non-empty list of integers >= 0")


def rules(cls, prefix: str, within: str = None) -> dict:
    """`{dotted key: (rule, want, required)}` of a section's dataclass, nested sections flattened. `required`
    is True, False (optional) or the prefix of an optional nested section: required when that is given."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, kind = f"{prefix}.{f.name}", _section_type(hints[f.name])
        if kind is not None:
            out |= rules(kind, key, key if f.default is None else within)
        elif f.default is not REQUIRED:
            out[key] = (f.metadata["rule"], f.metadata["want"], False)
        else:
            out[key] = (f.metadata["rule"], f.metadata["want"], within or True)
    return out


def build(cls, tree: dict, prefix: str, path: str = "params.yaml"):
    """The section's dataclass from its (already checked) mapping."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in tree:
            continue
        kind = _section_type(hints[f.name])
        values[f.name] = build(kind, tree[f.name], f"{prefix}.{f.name}", path) if kind is not None else tree[f.name]
    return cls(**values)


def _section_type(hint):
    """The dataclass a field nests (also behind Optional[...]), or None for a leaf value."""
    for candidate in (hint, *typing.get_args(hint)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _leaves(tree: dict, prefix: str, known: dict) -> dict:
    """Flattened keys, stopping at a known key whose value is itself a mapping (e.g. data.source.columns)."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}"
        out |= _leaves(value, name, known) if isinstance(value, dict) and name not in known else {name: value}
    return out


def check_tree(tree: dict, known: dict, section: str, path: str, replaced_by: dict, present) -> None:
    """Check the keys under `section` of the flattened params `tree` against `known` rules: every value
    obeys its rule, no unknown key (suggesting the closest), every required key present."""
    nested = isinstance(tree, dict) and section not in known  # a mapping where one value belongs is refused below
    items = _leaves(tree, section, known) if nested else {section: tree}
    for key, v in items.items():
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ParamError(f"{path}: unknown key '{key}'{hint}")
        rule, want, _ = known[key]
        if not rule(v):
            raise ParamError(f"{path}: '{key}' must be {want} (got {v!r})")
    for key, (_, _, required) in known.items():
        if not key.startswith(section + ".") or key in items or not required or \
                (key in replaced_by and present(replaced_by[key])):
            continue
        if required is True or any(k.startswith(required + ".") for k in items):
            raise ParamError(f"{path}: missing key '{key}'")


def flatten(tree, prefix="") -> dict:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, name + ".")
        else:
            out[name] = value
    return out
