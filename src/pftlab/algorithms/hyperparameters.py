"""Each algorithm's hyperparameters (`algos.<name>.*` in params.yaml), with their rules (core/config.py).

Torch-free, so that params are checked before anything heavy is imported; the algorithm table
(`table.py`) has one row per entry here, and a test checks that the two name the same algorithms."""
from dataclasses import dataclass

from pftlab.core.config import is_bool, is_number, knob, nonneg, one_of, pos_int, positive

KL_ESTIMATORS = ("k1", "k3")
_K = (lambda v: pos_int(v) and v >= 2, "an integer >= 2")


@dataclass(frozen=True, kw_only=True)
class CommonHp:
    """What every algorithm may set: its own learning rate (the hyperparameter sweep's choice; absent: policy.lr)."""
    lr: float = knob(positive, "a number > 0 (absent: policy.lr)", default=None)


@dataclass(frozen=True, kw_only=True)
class RwrHp(CommonHp):
    temperature: float = knob(positive, "a number > 0")
    max_weight: float = knob(positive, "a number > 0")


@dataclass(frozen=True, kw_only=True)
class BonHp(CommonHp):
    samples_per_prompt: int = knob(*_K)
    top: int = knob(pos_int, "a positive integer")


@dataclass(frozen=True, kw_only=True)
class OnPolicyRwrHp(RwrHp):
    samples_per_prompt: int = knob(*_K)


@dataclass(frozen=True, kw_only=True)
class KlPenalty(CommonHp):
    kl_coef: float = knob(nonneg, "a number >= 0")
    kl_estimator: str = knob(one_of(KL_ESTIMATORS), "k1 or k3")


@dataclass(frozen=True, kw_only=True)
class ReinforceHp(KlPenalty):
    samples_per_prompt: int = knob(pos_int, "a positive integer")
    clip: float = knob(positive, "a number > 0")  # of the importance ratio to the collecting policy
    baseline_decay: float = knob(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class RlooHp(KlPenalty):
    samples_per_prompt: int = knob(*_K)
    clip: float = knob(positive, "a number > 0")  # of the importance ratio to the collecting policy


@dataclass(frozen=True, kw_only=True)
class PpoHp(CommonHp):
    samples_per_prompt: int = knob(pos_int, "a positive integer")
    kl_coef: float = knob(nonneg, "a number >= 0")
    adaptive_kl: bool = knob(is_bool, "true or false")
    kl_target: float = knob(positive, "a number > 0")
    kl_horizon: int = knob(pos_int, "a positive integer")
    clip: float = knob(positive, "a number > 0")
    value_clip: float = knob(positive, "a number > 0")
    vf_coef: float = knob(nonneg, "a number >= 0")
    gamma: float = knob(lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")
    gae_lambda: float = knob(lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class PairHp(CommonHp):
    beta: float = knob(positive, "a number > 0")


@dataclass(frozen=True, kw_only=True)
class OnlinePairHp(PairHp):
    min_reward_gap: float = knob(nonneg, "a number >= 0")
    offline_fraction: float = knob(lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)")


@dataclass(frozen=True, kw_only=True)
class IpoHp(PairHp):
    # true: log-ratios averaged over response tokens (the IPO authors' form, TRL's); false: summed (Azar et al.'s eq.)
    length_normalise: bool = knob(is_bool, "true or false")


@dataclass(frozen=True, kw_only=True)
class OnlineIpoHp(OnlinePairHp):
    length_normalise: bool = knob(is_bool, "true or false")


@dataclass(frozen=True, kw_only=True)
class HypoHp(PairHp):
    lam: float = knob(nonneg, "a number >= 0")
    samples_per_prompt: int = knob(*_K)
    length_penalty: float = knob(nonneg, "a number >= 0")


HYPERPARAMETERS = {
    "pref_ft": CommonHp, "offline_bon": CommonHp, "offline_rwr": RwrHp, "bon": BonHp, "rwr": OnPolicyRwrHp,
    "reinforce": ReinforceHp, "rloo": RlooHp, "ppo": PpoHp, "dpo": PairHp, "ipo": IpoHp,
    "online_dpo": OnlinePairHp, "online_ipo": OnlineIpoHp, "hypo": HypoHp,
}
ALGORITHM_NAMES = tuple(HYPERPARAMETERS)
