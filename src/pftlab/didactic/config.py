"""The didactic stages' params sections, each with its rules (see core/config.py): Tajwar et al.'s
bandit and token-level bandit, Song et al.'s coverage problems."""
import dataclasses
from dataclasses import dataclass, make_dataclass

from pftlab.algorithms.hyperparameters import HYPERPARAMETERS, PairHp, RwrHp
from pftlab.core.config import (
    INT_AT_LEAST_2,
    NONNEG,
    NONNEG_INT,
    POS_INT,
    POSITIVE,
    SEEDS,
    knob,
    list_of,
    nonneg,
    one_of,
    pos_int,
    positive,
)
from pftlab.core.errors import ParamError
from pftlab.training.config import LoopKnobs

BANDIT_METHODS = ("best_of_n", "rwr", "reinforce", "ppo", "dpo", "ipo")
_ACTION = (lambda v: nonneg(v) and v <= 99, "an action in [0, 99]")
_METHODS = (list_of(lambda v: True, BANDIT_METHODS), f"a non-empty list from {', '.join(BANDIT_METHODS)}")


@dataclass(frozen=True, kw_only=True)
class RewardPeaks:
    aligned: int = knob(*_ACTION)  # peak action where pi_ref is likely
    misaligned: int = knob(*_ACTION)  # ... and where it is not


@dataclass(frozen=True, kw_only=True)
class BanditSetting:
    """One sampling setting of the authors' scripts: collections of N samples per context, steps on each."""
    train_contexts: int = knob(*POS_INT)
    collections: int = knob(*POS_INT)
    steps_per_collection: int = knob(*POS_INT)
    lr: float = knob(*POSITIVE)


@dataclass(frozen=True, kw_only=True)
class IpoSetting:
    """What the authors' IPO scripts set differently from best-of-N's (absent: the setting's value)."""
    train_contexts: int = knob(*POS_INT, None)
    lr: float = knob(*POSITIVE, None)
    min_reward_gap: float = knob(*NONNEG, None)


@dataclass(frozen=True, kw_only=True)
class IpoSettings:
    offline: IpoSetting = None
    on_policy: IpoSetting = None


@dataclass(frozen=True, kw_only=True)
class BanditReuse:
    """The sample-reuse study at a fixed number of gradient steps: T steps on each of steps/T collections."""
    methods: list = knob(*_METHODS)
    values: list = knob(list_of(pos_int), "a non-empty list of positive integers (T)")
    # fixed: N samples per context per collection, fresh samples = steps/T collections (the budget study);
    # grows_with_T: N*T, samples fixed too (our earlier ablation, after the authors' on_policy_ablations.py)
    collection_size: str = knob(one_of(("fixed", "grows_with_T")), "fixed or grows_with_T", "fixed")
    steps: int = knob(pos_int, "a positive integer (a multiple of every T)")
    train_contexts: int = knob(*POS_INT)
    lr: float = knob(*POSITIVE)
    # the fixed-compute reading: a fresh sample's cost in passes of one sample through a gradient step (compute =
    # cost x fresh samples + gradient steps x samples per collection); each value is a line of claim 2
    sample_costs: list = knob(list_of(positive), "a non-empty list of numbers > 0", (1.0,))


@dataclass(frozen=True, kw_only=True)
class BanditReinforceHp:
    """The authors' REINFORCE (bandit_learner.py:882-1047): a z-scored reward and an entropy bonus."""
    entropy_coef: float = knob(*NONNEG)
    entropy_estimate: str = knob(one_of(("sampled", "exact")), "sampled or exact", "sampled")  # sampled: the authors'
    baseline: str = knob(one_of(("running", "collection")), "running or collection", "running")  # running: the authors'
    clip: float = knob(*POSITIVE, default=None)  # absent: plain REINFORCE on reused samples (the authors')


@dataclass(frozen=True, kw_only=True)
class BanditPpoHp:
    """One-step PPO (ours: the authors' MLP code has none): no value head, the context's mean reward as baseline."""
    clip: float = knob(*POSITIVE)
    kl_coef: float = knob(*NONNEG)


@dataclass(frozen=True, kw_only=True)
class BanditPairHp(PairHp):
    """DPO / IPO on all pairs of a context's samples: the LLM task's knobs and the authors' pair filter."""
    min_reward_gap: float = knob(*NONNEG)


@dataclass(frozen=True, kw_only=True)
class BanditAlgos:
    """Each bandit method's hyperparameters; RWR's and DPO/IPO's are the LLM task's dataclasses (best-of-N has none)."""
    rwr: RwrHp = None
    reinforce: BanditReinforceHp = None
    ppo: BanditPpoHp = None
    dpo: BanditPairHp = None
    ipo: BanditPairHp = None


BANDIT_METHODS_WITH_KNOBS = tuple(f.name for f in dataclasses.fields(BanditAlgos))
assert set(BANDIT_METHODS_WITH_KNOBS) | {"best_of_n"} == set(BANDIT_METHODS)


@dataclass(frozen=True, kw_only=True)
class BanditConfig:
    seeds: list = knob(*SEEDS)
    eval_contexts: int = knob(*POS_INT)
    samples_per_context: int = knob(*INT_AT_LEAST_2)
    init_gain: float = knob(*POSITIVE)
    fit_steps: int = knob(*NONNEG_INT)
    fit_lr: float = knob(*POSITIVE)
    rewards: RewardPeaks
    reward_width: float = knob(*POSITIVE)
    methods: list = knob(*_METHODS)
    offline: BanditSetting
    on_policy: BanditSetting
    ipo: IpoSettings = None
    logp: str = knob(one_of(("clamped", "log_softmax")), "clamped or log_softmax", "clamped")  # clamped: the authors' Categorical
    reference: str = knob(one_of(("per_seed", "fixed")), "per_seed or fixed", "per_seed")  # per_seed: a pi_ref drawn per run, as theirs
    algos: BanditAlgos
    reuse: BanditReuse

    def hyperparameters(self, method: str, sampling: str):
        """Method `method`'s typed hyperparameters in one cell (None for best-of-N, which has none), with the authors'
        IPO scripts' own pair filter where their setting sets one (`ipo.<setting>.min_reward_gap`)."""
        hp = getattr(self.algos, method, None)
        own = getattr(self.ipo, sampling, None) if method == "ipo" and self.ipo is not None else None
        if own is not None and own.min_reward_gap is not None:
            hp = dataclasses.replace(hp, min_reward_gap=own.min_reward_gap)
        return hp

    def check_methods(self, path: str):
        """Every method it runs has its hyperparameters, and none sets a learning rate of its own: the bandit's are
        per setting (`offline.lr`, `on_policy.lr`, `reuse.lr`), so one here would be silently ignored."""
        for method in dict.fromkeys([*self.methods, *self.reuse.methods]):
            if method in BANDIT_METHODS_WITH_KNOBS and getattr(self.algos, method) is None:
                raise ParamError(f"{path}: 'bandit.methods' runs {method} but 'bandit.algos.{method}' is not given")
            if getattr(getattr(self.algos, method, None), "lr", None) is not None:
                raise ParamError(f"{path}: 'bandit.algos.{method}.lr' is not read: the bandit's learning rate is per "
                                 "setting ('bandit.offline.lr', 'bandit.on_policy.lr', 'bandit.reuse.lr')")
        return self


# Each algorithm's hyperparameters on the token-level bandit: the LLM task's own dataclass for it
# (algorithms/hyperparameters.py), one optional section per algorithm; `algorithms` says which must be given.
TokenBanditAlgos = make_dataclass("TokenBanditAlgos", [(name, cls, None) for name, cls in HYPERPARAMETERS.items()],
                                  frozen=True, kw_only=True)


@dataclass(frozen=True, kw_only=True)
class TokenBanditConfig(LoopKnobs):
    """The token-level bandit: its loop knobs obey the policy loop's rules (it runs that loop)."""
    seeds: list = knob(*SEEDS)
    algorithms: list = knob(list_of(lambda v: isinstance(v, str)), "a non-empty list of offline or on-policy algorithms")
    rewards: RewardPeaks
    reward_width: float = knob(*POSITIVE)
    train_prompts: int = knob(*POS_INT)
    eval_prompts: int = knob(*POS_INT)
    fit_steps: int = knob(*NONNEG_INT)
    offline_pairs_per_prompt: int = knob(*POS_INT)
    eval_samples: int = knob(*POS_INT)
    algos: TokenBanditAlgos

    def hyperparameters(self, name: str):
        """Algorithm `name`'s typed hyperparameters (`token_bandit.algos.<name>`)."""
        return getattr(self.algos, name)

    def check_algorithms(self, path: str):
        """Every algorithm it runs is known and has its hyperparameters; on-policy pairs take no offline share (the
        token bandit gives on-policy methods no offline pairs)."""
        for name in self.algorithms:
            if name not in HYPERPARAMETERS:
                raise ParamError(f"{path}: 'token_bandit.algorithms' names unknown algorithm {name!r}; "
                                 f"known: {', '.join(HYPERPARAMETERS)}")
            hp = self.hyperparameters(name)
            if hp is None:
                raise ParamError(f"{path}: 'token_bandit.algorithms' runs {name} but 'token_bandit.algos.{name}' is not given")
            if getattr(hp, "offline_fraction", 0):
                raise ParamError(f"{path}: 'token_bandit.algos.{name}.offline_fraction' must be 0 (no offline pairs "
                                 "for on-policy methods on the token bandit)")
        return self


@dataclass(frozen=True, kw_only=True)
class Claim6Runs:
    """Claim 6's DPO runs on the multi-armed bandit (coverage_mass.py), at Song et al.'s length (6.1.2: 5000 iterations)."""
    steps: int = knob(pos_int, "a positive integer (DPO iterations; also RLHF's ascent steps)")
    sgd_lr: float = knob(*POSITIVE)
    adam_lr: float = knob(*POSITIVE)
    log_every: int = knob(pos_int, "a positive integer (steps between logged points of the curves)")


@dataclass(frozen=True, kw_only=True)
class CoverageConfig:
    seeds: list = knob(*SEEDS)
    steps: int = knob(*POS_INT)
    rm_steps: int = knob(*POS_INT)
    lr: float = knob(*POSITIVE)
    beta: float = knob(*POSITIVE)
    lam: float = knob(*POSITIVE)
    batch_size: int = knob(*POS_INT)
    pairs: int = knob(*POS_INT)
    preferred_subset: int = knob(*POS_INT)
    claim6: Claim6Runs
