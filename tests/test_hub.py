"""Hugging Face datasets and models: column layouts and fast, clear failure offline. The real pretrained
model (SmolLM2-135M-Instruct, GGUF) is exercised end to end by tests/test_pipeline.py (hh-smollm)."""
import json
import time

import pytest

from pftlab.core.errors import DataError
from pftlab.lm import hub

HH = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello there.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}
ULTRAFEEDBACK = {"prompt": "Name a prime.", "prompt_id": "x",
                 "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
                 "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}],
                 "score_chosen": 9.0, "score_rejected": 2.0}
TLDR = {"prompt": "SUBREDDIT: r/cats POST: ... TL;DR:", "chosen": " cat sat", "rejected": " dog ran"}
ALPACA = {"instruction": "Add.", "input": "2 and 3", "output_1": "5", "output_2": "6", "preference": 1}


def test_each_dataset_layout_maps_to_prompt_chosen_rejected():
    rows, skipped = hub.to_preference_rows([HH], "hh_rlhf", "d")
    assert rows == [{"prompt": "\n\nHuman: Hi?\n\nAssistant:", "chosen": " Hello there.", "rejected": " Go away."}] and not skipped
    rows, _ = hub.to_preference_rows([ULTRAFEEDBACK, TLDR], "prompt_chosen_rejected", "d")
    assert rows == [{"prompt": "Name a prime.", "chosen": "7", "rejected": "8"},
                    {"prompt": TLDR["prompt"], "chosen": " cat sat", "rejected": " dog ran"}]
    rows, _ = hub.to_preference_rows([ALPACA, ALPACA | {"preference": 2}], "alpaca_farm", "d")
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("Add.\n\n2 and 3", "5", "6"), ("Add.\n\n2 and 3", "6", "5")]


def test_bad_rows_are_skipped_or_named():
    rows, skipped = hub.to_preference_rows([TLDR, TLDR | {"rejected": TLDR["chosen"]}, TLDR | {"chosen": "  "}],
                                           "prompt_chosen_rejected", "d")
    assert len(rows) == 1 and [i for i, _ in skipped] == [1, 2] and "identical" in skipped[0][1]
    with pytest.raises(DataError, match=r"dataset 'org/x': row 1 lacks column\(s\) rejected"):
        hub.to_preference_rows([TLDR, {"prompt": "p", "chosen": "c"}], "prompt_chosen_rejected", "dataset 'org/x'")
    with pytest.raises(DataError, match="unknown dataset layout 'tldr'"):
        hub.to_preference_rows([TLDR], "tldr", "d")
    with pytest.raises(DataError, match="row 0: expected text or a list of chat messages"):
        hub.to_preference_rows([TLDR | {"chosen": 3}], "prompt_chosen_rejected", "d")


def test_a_local_copy_loads_through_datasets(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [TLDR, TLDR | {"chosen": " bird flew"}]) + "\n")
    rows, skipped = hub.load_preference_dataset({"id": str(path), "layout": "prompt_chosen_rejected"})
    assert [r["chosen"] for r in rows] == [" cat sat", " bird flew"] and not skipped


def test_offline_hub_ids_fail_fast_with_a_message_naming_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(DataError, match=r"dataset 'pftlab-test/no-such-dataset' is not in the local .*hf download --repo-type dataset"):
        hub.load_preference_dataset({"id": "pftlab-test/no-such-dataset", "layout": "hh_rlhf", "split": "train"})
    with pytest.raises(DataError, match=r"model 'pftlab-test/no-such-model' is not in the local .* 'model.pretrained.id'"):
        hub.pretrained_tokenizer({"id": "pftlab-test/no-such-model"})
    assert time.time() - start < 30  # no retry loop (without HF_HUB_OFFLINE the libraries retry ~50 s)
    with pytest.raises(DataError, match="package 'no_such_pkg' is not installed"):
        hub.package_dir("no_such_pkg")
