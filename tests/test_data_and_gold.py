"""Prompt splitting, bad-row handling, the deterministic split, gold rewards and Bradley-Terry labels."""
import gzip
import json

import numpy as np
import pytest

from pftlab.core.errors import DataError
from pftlab.lm.data import is_eval_prompt, prepare, read_pairs
from pftlab.lm.gold import bradley_terry_prob, gold_reward, label_pair, length_mode, response_length, skew_keep_mask
from pftlab.lm.layouts import split_dialogue

GOOD = {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: fine", "rejected":
        "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: bad"}


def test_split_dialogue_at_the_last_assistant_turn():
    prompt, reply = split_dialogue(GOOD["chosen"])
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert reply == " fine"
    assert split_dialogue("\n\nHuman: no assistant here") is None


def write_rows(path, lines):
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")


def test_bad_rows_are_skipped_and_counted(tmp_path):
    good = json.dumps(GOOD).encode()
    bad = [b'{"chosen": "x"}', b'{"chosen": "", "rejected": "\\n\\nAssistant: a"}', b"\xff\xfe not utf8",
           json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}).encode(),
           b"{not json"]
    path = tmp_path / "p.jsonl.gz"
    write_rows(path, [good] * 20 + bad)
    rows, report = read_pairs({"id": str(path), "layout": "hh_rlhf"}, max_bad_fraction=0.5)
    assert len(rows) == 20 and report["rows_skipped"] == 5 and report["rows_read"] == 25
    assert sorted(s.split(":")[0] for s in report["skipped_rows"]) == [f"line {n}" for n in range(21, 26)]
    reasons = " ".join(report["skipped_rows"])
    for word in ("missing column 'rejected'", "'chosen' is empty", "undecodable", "do not share a prompt", "invalid JSON"):
        assert word in reasons
    assert sum(report["skipped_by_reason"].values()) == 5
    with pytest.raises(DataError, match=r"p\.jsonl\.gz: 5 of 25 rows .*line 2"):
        read_pairs({"id": str(path), "layout": "hh_rlhf"}, max_bad_fraction=0.1)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "cut.jsonl.gz"
    write_rows(path, [json.dumps(GOOD).encode()] * 200)
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="cut.jsonl.gz: truncated or corrupt gzip"):
        read_pairs({"id": str(path), "layout": "hh_rlhf"}, 0.01)


def test_split_is_by_prompt_and_independent_of_order():
    rows = [{"prompt": f"p{i % 50}", "chosen": " a", "rejected": " b"} for i in range(200)]
    a, b = prepare(rows, 0.2), prepare(rows[::-1], 0.2)
    assert {r["prompt"] for r in a["prompts_eval"]} == {r["prompt"] for r in b["prompts_eval"]}
    assert not {r["prompt"] for r in a["prompts_eval"]} & {r["prompt"] for r in a["prompts_train"]}
    assert len(a["prompts_train"]) + len(a["prompts_eval"]) == 50
    share = np.mean([is_eval_prompt(f"prompt {i}", 0.2) for i in range(5000)])
    assert 0.18 < share < 0.22


def test_gold_rewards():
    assert response_length([5, 6, 1], eos_id=1) == 2 and response_length([5, 6], eos_id=1) == 2
    assert gold_reward({"reward": "min_length"}, [3, 10]).tolist() == [-3, -10]
    assert gold_reward({"reward": "mode_length", "mode": 7}, [3, 7, 10]).tolist() == [-4, 0, -3]
    assert length_mode([5, 5, 9, 9, 9, 48, 48, 48, 48], [True] * 5 + [False] * 4) == 9  # cut responses ignored


def test_bradley_terry_labels_follow_the_model():
    assert bradley_terry_prob(2.0, 1.0, 1.0) == pytest.approx(1 / (1 + np.exp(-1)))
    rng = np.random.default_rng(0)
    wins = np.mean([label_pair(1.0, 0.0, 2.0, rng) for _ in range(20000)])
    assert wins == pytest.approx(1 / (1 + np.exp(-0.5)), abs=0.01)


def test_skew_makes_short_responses_rare():
    rng = np.random.default_rng(0)
    a, b = rng.integers(1, 40, 4000), rng.integers(1, 40, 4000)
    keep = skew_keep_mask(a, b, quantile=0.5, keep=0.1, rng=rng)
    threshold = np.quantile(np.concatenate([a, b]), 0.5)
    short_pairs = (a < threshold) | (b < threshold)
    assert keep[~short_pairs].all()
    assert keep[short_pairs].mean() == pytest.approx(0.1, abs=0.03)
