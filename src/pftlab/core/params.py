"""Read params.yaml as DVC writes it and check every value a stage uses before any expensive work.

Each section's keys and rules are a dataclass beside the code that reads it (see core/config.py); this
module maps section names to them, reads the file (YAML 1.2 numbers: `2e-05`, as `dvc exp run -S` writes
them, is a number), refuses unknown keys (suggesting the closest) and builds typed sections. Torch-free.
"""
import difflib
import importlib
import re
from pathlib import Path

import yaml

from pftlab.core import config
from pftlab.core.errors import ParamError

# Each section's dataclass, imported only when that section is checked: a stage imports (and, through
# `python -m pftlab.core.deps`, declares as DVC deps) the config modules of the sections it reads only.
SECTIONS = {"data": "pftlab.lm.config.DataConfig", "tokenizer": "pftlab.lm.config.TokenizerConfig",
            "model": "pftlab.lm.config.ModelConfig", "generation": "pftlab.lm.config.GenerationConfig",
            "gold": "pftlab.lm.config.GoldConfig", "pairs": "pftlab.lm.config.PairsConfig",
            "eval": "pftlab.lm.config.EvalConfig", "variants": "pftlab.lm.config.VariantsConfig",
            "sft": "pftlab.training.config.SftConfig", "reward_model": "pftlab.training.config.RewardModelConfig",
            "policy": "pftlab.training.config.PolicyConfig", "checkpoint": "pftlab.training.config.CheckpointConfig",
            "training_seeds": "pftlab.training.config.TrainingSeedsConfig",
            "bandit": "pftlab.didactic.config.BanditConfig", "token_bandit": "pftlab.didactic.config.TokenBanditConfig",
            "coverage": "pftlab.didactic.config.CoverageConfig",
            "algos": "pftlab.algorithms.hyperparameters.HYPERPARAMETERS",  # algos.<name>: that algorithm's dataclass
            "algorithms": "pftlab.algorithms.hyperparameters.ALGORITHM_NAMES"}
TOP_LEVEL = {
    "seed": (*config.NONNEG_INT, True),
    "launch": (config.text, "the command that starts a training stage's python", True),
    "algorithms": (config.list_of(lambda v: isinstance(v, str)), "a non-empty list of algorithm names", True),
}
# Keys required only while the key they stand for is absent.
REPLACED_BY = {"data.raw": "data.source", "model.n_layer": "model.pretrained", "model.n_embd": "model.pretrained",
               "model.n_head": "model.pretrained"}


def _load(dotted: str):
    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def section_modules(section: str) -> list:
    """The modules that checking a params section imports: what a stage declaring it depends on."""
    head = section.split(".")[0]
    names = [SECTIONS[head]] if head in SECTIONS else []
    if head in ("algorithms", "variants"):  # they name algorithms
        names.append(SECTIONS["algorithms"])
    return sorted({name.rsplit(".", 1)[0] for name in names})


def algorithm_names() -> tuple:
    return _load(SECTIONS["algorithms"])


def known_rules(section: str) -> dict:
    """`{dotted key: (rule, want, required)}` for the keys under one section (or a top-level key)."""
    head = section.split(".")[0]
    if head == "algos":
        hyperparameters = _load(SECTIONS["algos"])
        names = [section.split(".")[1]] if "." in section else list(hyperparameters)
        return {k: v for name in names if name in hyperparameters
                for k, v in config.rules(hyperparameters[name], f"algos.{name}").items()}
    if head in TOP_LEVEL:
        return {head: TOP_LEVEL[head]}
    if head not in SECTIONS:
        return {}
    out = config.rules(_load(SECTIONS[head]), head)
    if head == "checkpoint":  # read by training stages, a DVC param of none: never required
        out = {k: v[:2] + (False,) for k, v in out.items()}
    return out


def __getattr__(name):
    """RULES / OPTIONAL, `{key: (rule, what it allows)}` of every section: the keys every params file has,
    and those a preset may add (computed on first use: they import every section's dataclass)."""
    if name not in ("RULES", "OPTIONAL"):
        raise AttributeError(name)
    known = {}
    for section in [*TOP_LEVEL, *[s for s in SECTIONS if s not in TOP_LEVEL and "." not in s]]:
        known |= known_rules(section)
    required = name == "RULES"
    return {k: (rule, want) for k, (rule, want, req) in known.items()
            if (req is True) == required and not (required and k.startswith("algos."))}


class _Yaml12Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where `2e-05` or `1e5` is a string; DVC writes YAML 1.2, where it is a float."""


_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$|^[-+]?\.[0-9]+(?:[eE][-+]?[0-9]+)?$"),
    list("-+0123456789."))


def read_yaml(text: str):
    return yaml.load(text, Loader=_Yaml12Loader)


def locked_stages(lock_path="dvc.lock") -> dict:
    """dvc.lock's stages: what each stage last ran with (params, dependency and output hashes); {} without a
    readable one. Read as YAML 1.2, as DVC writes it: `lr: 3e-05` is a number there, a string to YAML 1.1."""
    try:
        return read_yaml(Path(lock_path).read_text())["stages"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return {}


class Params:
    """The parsed params file; `p["policy.lr"]` reads a dotted key and names it when it is missing;
    `p.config("policy")` is the typed section. A stage's view (`declared_only`) refuses a key the stage does not
    declare: DVC reruns a stage when its declared params change, so a result must depend on no other."""

    def __init__(self, tree: dict, path: str = "params.yaml", declared: tuple | None = None, stage: str = ""):
        self.tree, self.path = tree, path
        self.declared, self.stage = declared, stage  # declared None: every key may be read

    def declared_only(self, stage: str, keys) -> "Params":
        """This file as stage `stage` may read it: the keys it declares and everything under them."""
        return Params(self.tree, self.path, tuple(keys), stage)

    def _refuse_undeclared(self, key: str):
        if self.declared is None or any(key == d or key.startswith(d + ".") for d in self.declared):
            return
        raise ParamError(f"stage '{self.stage}' reads '{key}', which it does not declare "
                         f"({', '.join(self.declared)}): declare it in src/pftlab/core/pipeline.py")

    def __getitem__(self, key):
        self._refuse_undeclared(key)
        node = self.tree
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ParamError(f"{self.path}: missing key '{key}'")
            node = node[part]
        return node

    def get(self, key, default=None):
        self._refuse_undeclared(key)  # an undeclared key is an error, not a missing one
        try:
            return self[key]
        except ParamError:
            return default

    def section(self, *keys) -> dict:
        """The subtrees a stage reads, for logging exactly those params."""
        return {k: self[k] for k in keys}

    def check(self, *sections):
        """Validate every known key under the given sections; reject unknown keys there."""
        if "training_seeds" in sections and isinstance(self.get("training_seeds"), dict) and "algorithms" in self["training_seeds"]:
            raise ParamError(f"{self.path}: 'training_seeds.algorithms' is no longer a key: every policy of 'algorithms' "
                             "is trained with each seed of 'training_seeds.seeds' (stage seeds@<algorithm>); remove it")
        for section in sections:
            head = section.split(".")[0]
            if head not in SECTIONS and head not in TOP_LEVEL:
                close = difflib.get_close_matches(head, [*SECTIONS, *TOP_LEVEL], n=1)
                raise ParamError(f"{self.path}: unknown section '{head}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
            known = known_rules(section)
            config.check_tree(self[section], known, section, self.path, REPLACED_BY, lambda k: self.get(k) is not None)
        for key in ("algorithms", "variants.algorithms"):
            if key in sections or key.split(".")[0] in sections:
                for name in self[key]:
                    if name not in algorithm_names():
                        raise ParamError(f"{self.path}: '{key}' names unknown algorithm {name!r}; "
                                         f"known: {', '.join(algorithm_names())}")
        if "training_seeds" in sections:  # other seeds of every policy the main run trains
            seeds = self["training_seeds.seeds"]
            if self["seed"] in seeds:
                raise ParamError(f"{self.path}: 'training_seeds.seeds' repeats 'seed' ({self['seed']}): list the other seeds")
            twice = sorted({s for s in seeds if seeds.count(s) > 1})
            if twice:
                raise ParamError(f"{self.path}: 'training_seeds.seeds' lists {', '.join(map(str, twice))} more than once")
        return self

    def check_stage_lists(self):
        """Check the lists that decide which stages dvc.yaml generates (algorithms, variants, training_seeds) and
        every rule that joins two sections (CROSS_SECTION_RULES). Every stage calls this, whatever it declares, so
        a bad combination stops the first stage that runs rather than a later one minutes in; it only reads them
        to refuse, never to compute, so they are not DVC params there."""
        self.check(*[s for s in ("algorithms", "variants", "training_seeds") if self.get(s) is not None])
        for broken, message in CROSS_SECTION_RULES:
            if broken(self):
                raise ParamError(f"{self.path}: {message}")
        return self

    def config(self, section: str):
        """The typed, checked section (e.g. `PolicyConfig`); `algos.<name>` gives the algorithm's hyperparameters."""
        self.check(section)
        cls = _load(SECTIONS["algos"])[section.split(".")[1]] if section.startswith("algos.") else _load(SECTIONS[section])
        return config.build(cls, self[section], section, self.path)


# Rules that read two sections: (is it broken?, what to set). Each reads only keys that may be absent with .get.
CROSS_SECTION_RULES = [
    (lambda p: p.get("data.source") and p.get("pairs.source") is None,
     "'data.source' is set (your own preference data) but 'pairs.source' is not: set 'pairs.source: human' to train "
     "the reward model and the offline methods on your data's labels, or 'pairs.source: sft_samples' to label pairs "
     "of SFT samples by 'gold.reward' instead (the papers' synthetic task; your labels then train only SFT)"),
    (lambda p: p.get("pairs.source") == "human" and p.get("variants.rewards"),
     "'variants.rewards' relabel SFT samples by other gold rewards; with 'pairs.source: human' leave it empty"),
    (lambda p: isinstance(p.get("model.n_embd"), int) and isinstance(p.get("model.n_head"), int)
     and p.get("model.n_head") > 0 and p.get("model.n_embd") % p.get("model.n_head"),
     "'model.n_embd' must be divisible by 'model.n_head'"),
]


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


def check_algorithm_params(p: Params, name: str):
    """The hyperparameters of one algorithm, typed (its dataclass of algorithms/hyperparameters.py): every required
    one present and in range."""
    if name not in algorithm_names():
        raise ParamError(f"{p.path}: unknown algorithm {name!r}; known: {', '.join(algorithm_names())}")
    return p.config(f"algos.{name}")


def check_batch(key: str, batch: int, available: int, what: str, path="params.yaml"):
    if batch > available:
        raise ParamError(f"{path}: '{key}' = {batch} is larger than the {available} {what} available")
