"""The training loops' params, each with its rule (see core/config.py): the optimiser knobs every loop reads
(`sft`, `reward_model`, `policy`, `token_bandit`), the supervised sections and the policy loop's own."""
from dataclasses import dataclass

from pftlab.core.config import BOOL, FRACTION_OPEN, NONNEG, NONNEG_INT, POS_INT, POSITIVE, knob, list_of, nonneg_int, one_of, text

LR_SCHEDULES = ("cosine", "linear", "constant")  # after warmup; optimization.py maps them to transformers' names
REFERENCES = ("frozen_copy", "lora")
_DEEPSPEED = "a DeepSpeed JSON config file, e.g. configs/deepspeed/zero2.json"


@dataclass(frozen=True, kw_only=True)
class OptimizerKnobs:
    lr: float = knob(*POSITIVE)
    warmup_steps: int = knob(*NONNEG_INT)
    lr_schedule: str = knob(one_of(LR_SCHEDULES), f"one of {', '.join(LR_SCHEDULES)}")
    max_grad_norm: float = knob(*POSITIVE)


@dataclass(frozen=True, kw_only=True)
class ScaleKnobs:
    """Optional: absent, no micro-batches, plain PyTorch, and a non-finite step stops the stage."""
    micro_batch_size: int = knob(*POS_INT, None)
    deepspeed: str = knob(text, _DEEPSPEED, None)
    skip_nonfinite_steps: int = knob(*NONNEG_INT, None)


@dataclass(frozen=True, kw_only=True)
class SupervisedConfig(OptimizerKnobs, ScaleKnobs):
    """A supervised section (`sft`, `reward_model`): epochs of shuffled minibatches."""
    epochs: int = knob(*POS_INT)
    batch_size: int = knob(*POS_INT)
    weight_decay: float = knob(*NONNEG)


@dataclass(frozen=True, kw_only=True)
class SftConfig(SupervisedConfig):
    """`sft`: prompt -> chosen reply."""
    max_examples: int = knob(*POS_INT, None)  # absent: every SFT example


@dataclass(frozen=True, kw_only=True)
class RewardModelConfig(SupervisedConfig):
    """`reward_model`: Bradley-Terry on the task's pairs."""
    eval_fraction: float = knob(*FRACTION_OPEN)


@dataclass(frozen=True, kw_only=True)
class LoopKnobs(OptimizerKnobs, ScaleKnobs):
    """The policy loop's schedule: collections, their size, minibatches and passes (sample reuse T)."""
    iterations: int = knob(*POS_INT)
    batch_size: int = knob(*POS_INT)
    minibatch_size: int = knob(*POS_INT)
    steps_per_batch: int = knob(*POS_INT)
    monitor_every: int = knob(*POS_INT)


@dataclass(frozen=True, kw_only=True)
class PolicyConfig(LoopKnobs):
    """`policy`: shared by every policy@ stage."""
    reference: str = knob(one_of(REFERENCES), "frozen_copy or lora")
    lora_rank: int = knob(*POS_INT)
    lora_alpha: float = knob(*POSITIVE)
    gradient_checkpointing: bool = knob(*BOOL, None)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """`checkpoint`: read by every training stage but a DVC param of none (it cannot change a number)."""
    every_steps: int = knob(nonneg_int, "an integer >= 0 (0: only on SIGINT / SIGTERM)", None)



@dataclass(frozen=True, kw_only=True)
class TrainingSeedsConfig:
    """`training_seeds`: every policy of `algorithms` again with each of these seeds besides `seed` (the same SFT
    model, pairs and reward model): stage seeds@<algorithm> trains and evaluates them all, and the report compares
    policies over training seeds. Empty: one training seed per policy."""
    seeds: list = knob(list_of(nonneg_int, empty=True), "a list of integers >= 0 other than `seed`")
