"""The LLM judge's win rate: order randomised per comparison, so a judge that always answers "A" scores
the policy at about one half, and a judge with a real preference is read correctly whatever the order."""
import re

import numpy as np

from pftlab.evaluation.judge import PROMPT, judge_win_rate


def responses(prompt):
    a, b = re.search(r"Response A:\n(.*)\n\nResponse B:\n(.*)\n\nState", prompt, re.S).groups()
    return a, b


def test_a_judge_that_always_answers_a_gives_one_half_and_shows_its_bias():
    n = 400
    out = judge_win_rate(["q"] * n, ["policy"] * n, ["reference"] * n, lambda ps: [True] * len(ps), seed=0)
    assert out["judge_answered_a"] == 1.0 and out["judge_comparisons"] == n
    assert abs(out["judge_win_rate_vs_sft"] - 0.5) < 0.08  # the randomised order cancels the position bias


def test_a_judge_preferring_longer_replies_is_read_whatever_the_order():
    rng = np.random.default_rng(1)
    policy = ["x" * int(2 * k + 1) for k in rng.integers(0, 10, 50)]  # odd lengths, and even ones: no ties
    reference = ["y" * int(2 * k) for k in rng.integers(1, 11, 50)]
    longer_first = lambda ps: [len(responses(p)[0]) > len(responses(p)[1]) for p in ps]
    out = judge_win_rate(["query"] * 50, policy, reference, longer_first, seed=3)
    truth = np.mean([len(p) > len(r) for p, r in zip(policy, reference)])
    assert out["judge_win_rate_vs_sft"] == truth and 0.2 < out["judge_answered_a"] < 0.8
    prompt = PROMPT.format(query="Hi?", a="Hello.", b="Go away.")
    assert prompt.endswith("More helpful:") and "Response A:\nHello." in prompt
