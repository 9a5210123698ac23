"""Read params.yaml as DVC writes it and check every value a stage uses before any expensive work.

Each section's keys and rules are a dataclass beside the code that reads it (see core/config.py); this
module maps section names to them, reads the file (YAML 1.2 numbers: `2e-05`, as `dvc exp run -S` writes
them, is a number), refuses unknown keys (suggesting the closest) and builds typed sections. Torch-free.
"""
import re
from pathlib import Path

import yaml

from pftlab.algorithms.hyperparameters import ALGORITHM_NAMES, HYPERPARAMETERS
from pftlab.core import config
from pftlab.core.errors import ParamError
from pftlab.didactic.config import BanditConfig, CoverageConfig, TokenBanditConfig
from pftlab.lm.config import (
    DataConfig,
    EvalConfig,
    GenerationConfig,
    GoldConfig,
    ModelConfig,
    PairsConfig,
    TokenizerConfig,
    VariantsConfig,
)
from pftlab.training.config import CheckpointConfig, PolicyConfig, RewardModelConfig, SftConfig

SECTIONS = {"data": DataConfig, "tokenizer": TokenizerConfig, "model": ModelConfig, "sft": SftConfig,
            "generation": GenerationConfig, "gold": GoldConfig, "pairs": PairsConfig,
            "reward_model": RewardModelConfig, "variants": VariantsConfig, "policy": PolicyConfig,
            "checkpoint": CheckpointConfig, "bandit": BanditConfig, "token_bandit": TokenBanditConfig,
            "coverage": CoverageConfig, "eval": EvalConfig}
TOP_LEVEL = {
    "seed": (config.nonneg_int, "an integer >= 0", True),
    "launch": (config.text, "the command that starts a training stage's python", True),
    "algorithms": (config.list_of(lambda v: isinstance(v, str)), "a non-empty list of algorithm names", True),
}
# Keys required only while the key they stand for is absent.
REPLACED_BY = {"data.raw": "data.source", "model.n_layer": "model.pretrained", "model.n_embd": "model.pretrained",
               "model.n_head": "model.pretrained"}

KNOWN = dict(TOP_LEVEL)
for _name, _cls in SECTIONS.items():
    KNOWN |= config.rules(_cls, _name)
for _name, _cls in HYPERPARAMETERS.items():
    KNOWN |= config.rules(_cls, f"algos.{_name}")
KNOWN["checkpoint.every_steps"] = KNOWN["checkpoint.every_steps"][:2] + (False,)
# {key: (rule, what it allows)}: the keys every params file has, and those a preset may add.
RULES = {k: (rule, want) for k, (rule, want, required) in KNOWN.items() if required is True and not k.startswith("algos.")}
OPTIONAL = {k: (rule, want) for k, (rule, want, required) in KNOWN.items() if required is not True}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `2e-05` or `1e5` is a string; DVC writes YAML 1.2, where it is a float."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Yaml12Loader)


class Params:
    """The parsed params file; `p["policy.lr"]` reads a dotted key and names it when it is missing;
    `p.config("policy")` is the typed section."""

    def __init__(self, tree: dict, path: str = "params.yaml"):
        self.tree, self.path = tree, path

    def __getitem__(self, key):
        node = self.tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamError(f"{self.path}: missing key '{key}'")
            node = node[part]
        return node

    def get(self, key, default=None):
        try:
            return self[key]
        except ParamError:
            return default

    def section(self, *keys) -> dict:
        """The subtrees a stage reads, for logging exactly those params."""
        return {k: self[k] for k in keys}

    def check(self, *sections):
        """Validate every known key under the given sections; reject unknown keys there."""
        for section in sections:
            config.check_tree(self[section], KNOWN, section, self.path, REPLACED_BY, lambda k: self.get(k) is not None)
        for key in ("algorithms", "variants.algorithms"):
            if key in sections or key.split(".")[0] in sections:
                for name in self[key]:
                    if name not in ALGORITHM_NAMES:
                        raise ParamError(f"{self.path}: '{key}' names unknown algorithm {name!r}; "
                                         f"known: {', '.join(ALGORITHM_NAMES)}")
        return self

    def config(self, section: str):
        """The typed, checked section (e.g. `PolicyConfig`); `algos.<name>` gives the algorithm's hyperparameters."""
        self.check(section)
        cls = HYPERPARAMETERS[section.split(".")[1]] if section.startswith("algos.") else SECTIONS[section]
        return config.build(cls, self[section], section, self.path)


def load_params(path="params.yaml") -> Params:
    path = Path(path)
    try:
        tree = read_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ParamError(f"{path}: expected a mapping of keys at the top level")
    return Params(tree, str(path))


def check_algorithm_params(p: Params, name: str) -> dict:
    """The hyperparameters of one algorithm: every required one present and in range."""
    if name not in ALGORITHM_NAMES:
        raise ParamError(f"{p.path}: unknown algorithm {name!r}; known: {', '.join(ALGORITHM_NAMES)}")
    p.check(f"algos.{name}")
    return dict(p[f"algos.{name}"])


def check_batch(key: str, batch: int, available: int, what: str, path="params.yaml"):
    if batch > available:
        raise ParamError(f"{path}: '{key}' = {batch} is larger than the {available} {what} available")
