"""Gold rewards of the synthetic LLM problem (Tajwar et al. 2024) and Bradley-Terry labelling.

Length |y| = response tokens before EOS. min_length: r = -|y| (peak far from where the SFT policy puts
its mass); mode_length: r = -| |y| - mode | with the mode of the SFT policy's own completed responses
(peak where it is likely); skew_length: min_length's reward, with pairs holding a short response made
rare so that the data barely covers the reward's peak.
"""
import math
from collections import Counter

import numpy as np

from pftlab.core.errors import ParamError
from pftlab.lm.config import GOLD_REWARDS


def ends_with_eos(tokens: list, eos_id: int) -> bool:
    """Whether a response was completed (its last token is EOS) rather than cut at the token cap."""
    return bool(tokens) and tokens[-1] == eos_id


def response_length(tokens: list, eos_id: int) -> int:
    """|y|: the response's tokens before its EOS."""
    return len(tokens) - 1 if ends_with_eos(tokens, eos_id) else len(tokens)


def length_mode(lengths: list, completed: list) -> int:
    """Most common length among responses that ended with EOS (cut responses pile up at the cap)."""
    pool = [n for n, done in zip(lengths, completed) if done] or list(lengths)
    counts = Counter(pool)
    return min(n for n, c in counts.items() if c == max(counts.values()))  # smallest on ties: deterministic


def gold_reward(spec: dict, lengths) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.float64)
    if spec["reward"] in ("min_length", "skew_length"):
        return -lengths
    if spec["reward"] == "mode_length":
        return -np.abs(lengths - spec["mode"])
    raise ParamError(f"unknown gold reward {spec['reward']!r}; known: {', '.join(GOLD_REWARDS)}")


def bradley_terry_prob(r1: float, r2: float, scale: float) -> float:
    """P(y1 preferred over y2) = sigmoid((r1 - r2) / scale)."""
    return 1.0 / (1.0 + math.exp(-(r1 - r2) / scale))


def label_pair(r1: float, r2: float, scale: float, rng: np.random.Generator) -> bool:
    """True when y1 is the preferred response, drawn from the Bradley-Terry model."""
    return bool(rng.random() < bradley_terry_prob(r1, r2, scale))


def skew_keep_mask(lengths_a, lengths_b, quantile: float, keep: float, rng: np.random.Generator) -> np.ndarray:
    """skew_length: keep a pair holding a response shorter than the length quantile with prob `keep`."""
    all_lengths = np.concatenate([lengths_a, lengths_b])
    threshold = np.quantile(all_lengths, quantile)
    short = (np.asarray(lengths_a) < threshold) | (np.asarray(lengths_b) < threshold)
    return ~short | (rng.random(len(short)) < keep)
