"""Each algorithm's hyperparameters (`algos.<name>.*` in params.yaml), with their rules (core/config.py).

Torch-free, so that params are checked before anything heavy is imported; the algorithm table
(`table.py`) has one row per entry here, and a test checks that the two name the same algorithms."""
from dataclasses import dataclass

from pftlab.core.config import BOOL, FRACTION_BELOW_1, FRACTION_CLOSED, INT_AT_LEAST_2, NONNEG, POS_INT, POSITIVE, knob, one_of, positive

KL_ESTIMATORS = ("k1", "k3")


@dataclass(frozen=True, kw_only=True)
class CommonHp:
    """What every algorithm may set: its own learning rate (the hyperparameter sweep's choice; absent: policy.lr)."""
    lr: float = knob(positive, "a number > 0 (absent: policy.lr)", default=None)


@dataclass(frozen=True, kw_only=True)
class RwrHp(CommonHp):
    temperature: float = knob(*POSITIVE)
    max_weight: float = knob(*POSITIVE)


@dataclass(frozen=True, kw_only=True)
class BonHp(CommonHp):
    samples_per_prompt: int = knob(*INT_AT_LEAST_2)
    top: int = knob(*POS_INT)


@dataclass(frozen=True, kw_only=True)
class OnPolicyRwrHp(RwrHp):
    samples_per_prompt: int = knob(*INT_AT_LEAST_2)


@dataclass(frozen=True, kw_only=True)
class KlPenalty(CommonHp):
    kl_coef: float = knob(*NONNEG)
    kl_estimator: str = knob(one_of(KL_ESTIMATORS), "k1 or k3")


@dataclass(frozen=True, kw_only=True)
class ReinforceHp(KlPenalty):
    samples_per_prompt: int = knob(*POS_INT)
    clip: float = knob(*POSITIVE)  # of the importance ratio to the collecting policy
    baseline_decay: float = knob(*FRACTION_BELOW_1)


@dataclass(frozen=True, kw_only=True)
class RlooHp(KlPenalty):
    samples_per_prompt: int = knob(*INT_AT_LEAST_2)
    clip: float = knob(*POSITIVE)  # of the importance ratio to the collecting policy


@dataclass(frozen=True, kw_only=True)
class PpoHp(CommonHp):
    samples_per_prompt: int = knob(*POS_INT)
    kl_coef: float = knob(*NONNEG)
    adaptive_kl: bool = knob(*BOOL)
    kl_target: float = knob(*POSITIVE)
    kl_horizon: int = knob(*POS_INT)
    clip: float = knob(*POSITIVE)
    value_clip: float = knob(*POSITIVE)
    vf_coef: float = knob(*NONNEG)
    gamma: float = knob(*FRACTION_CLOSED)
    gae_lambda: float = knob(*FRACTION_CLOSED)


@dataclass(frozen=True, kw_only=True)
class PairHp(CommonHp):
    beta: float = knob(*POSITIVE)


@dataclass(frozen=True, kw_only=True)
class OnlinePairHp(PairHp):
    min_reward_gap: float = knob(*NONNEG)
    offline_fraction: float = knob(*FRACTION_BELOW_1)


@dataclass(frozen=True, kw_only=True)
class IpoHp(PairHp):
    # true: log-ratios averaged over response tokens (the IPO authors' form, TRL's); false: summed (Azar et al.'s eq.)
    length_normalise: bool = knob(*BOOL)


@dataclass(frozen=True, kw_only=True)
class OnlineIpoHp(OnlinePairHp):
    length_normalise: bool = knob(*BOOL)


@dataclass(frozen=True, kw_only=True)
class HypoHp(PairHp):
    lam: float = knob(*NONNEG)
    samples_per_prompt: int = knob(*INT_AT_LEAST_2)
    length_penalty: float = knob(*NONNEG)


HYPERPARAMETERS = {
    "pref_ft": CommonHp, "offline_bon": CommonHp, "offline_rwr": RwrHp, "bon": BonHp, "rwr": OnPolicyRwrHp,
    "reinforce": ReinforceHp, "rloo": RlooHp, "ppo": PpoHp, "dpo": PairHp, "ipo": IpoHp,
    "online_dpo": OnlinePairHp, "online_ipo": OnlineIpoHp, "hypo": HypoHp,
}
ALGORITHM_NAMES = tuple(HYPERPARAMETERS)
