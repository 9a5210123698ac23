"""Hugging Face datasets and models: the presets' layouts, pinning, and fast, clear failure offline. The real pretrained
model (SmolLM2-135M-Instruct, GGUF) is exercised end to end by tests/test_pipeline.py (hh-smollm)."""
import json
import time

import pytest

from pftlab.core.errors import DataError
from pftlab.lm import hub, layouts, readers
from pftlab.lm.data import check_tracked, read_pairs

HH = {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello there.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go away."}
ULTRAFEEDBACK = {"prompt": "Name a prime.", "prompt_id": "x",
                 "chosen": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "7"}],
                 "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}],
                 "score_chosen": 9.0, "score_rejected": 2.0}
TLDR = {"prompt": "SUBREDDIT: r/cats POST: ... TL;DR:", "chosen": " cat sat", "rejected": " dog ran"}
ALPACA = {"instruction": "Add.", "input": "2 and 3", "output_1": "5", "output_2": "6", "preference": 1}


def test_the_presets_datasets_map_to_prompt_and_replies():
    pair = layouts.to_pair(HH, "hh_rlhf")
    assert layouts.render(pair) == ("\n\nHuman: Hi?\n\nAssistant:", " Hello there.", " Go away.")
    pair = layouts.to_pair(ULTRAFEEDBACK, "ultrafeedback_binarized")
    assert pair.messages == [{"role": "user", "content": "Name a prime."}] and (pair.chosen, pair.rejected) == ("7", "8")
    assert layouts.render(layouts.to_pair(TLDR, "prompt_chosen_rejected")) == (TLDR["prompt"], " cat sat", " dog ran")
    rendered = [layouts.render(layouts.to_pair(r, "alpaca_farm")) for r in (ALPACA, ALPACA | {"preference": 2})]
    assert rendered == [("Add.\n\n2 and 3", "5", "6"), ("Add.\n\n2 and 3", "6", "5")]
    with pytest.raises(layouts.Skip, match="'chosen' is a list, expected text"):  # chat lists need their layout
        layouts.to_pair(ULTRAFEEDBACK, "prompt_chosen_rejected")


def test_a_hub_dataset_must_be_pinned_and_a_local_one_tracked(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="data.source.revision: hub dataset 'org/x' is not pinned"):
        check_tracked({"id": "org/x", "layout": "hh_rlhf"})
    check_tracked({"id": "org/x", "layout": "hh_rlhf", "revision": "3949bf5f8c17c394422ccfab0c31ea9c20bdeb85"})
    with pytest.raises(DataError, match="outside data/raw/"):
        check_tracked({"id": str(tmp_path / "pairs.jsonl"), "layout": "hh_rlhf"})
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "raw").mkdir(parents=True)
    check_tracked({"id": "data/raw/pairs.jsonl", "layout": "hh_rlhf"})
    (tmp_path / "elsewhere.jsonl").write_text("{}\n")
    (tmp_path / "data" / "raw" / "linked.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    check_tracked({"id": "data/raw/linked.jsonl", "layout": "hh_rlhf"})  # a link inside data/raw/ is tracked there
    with pytest.raises(DataError, match="outside data/raw/"):
        check_tracked({"id": "data/raw/../../elsewhere.jsonl", "layout": "hh_rlhf"})
    linked = tmp_path / "linked_project"  # data/raw/ itself a link (to a big disk): its files are inside it
    (linked / "data").mkdir(parents=True)
    (linked / "data" / "raw").symlink_to(tmp_path / "data" / "raw")
    monkeypatch.chdir(linked)
    check_tracked({"id": "data/raw/pairs.jsonl", "layout": "hh_rlhf"})


def test_a_local_copy_reads_row_by_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [TLDR, TLDR | {"chosen": " bird flew"}]) + "\n")
    rows, report = read_pairs({"id": str(path), "layout": "prompt_chosen_rejected"}, 0.0)
    assert [r["chosen"] for r in rows] == [" cat sat", " bird flew"] and report["rows_skipped"] == 0


def test_offline_hub_ids_fail_fast_with_a_message_naming_the_id(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(DataError, match=r"dataset 'pftlab-test/no-such-dataset' is not in the local .*hf download --repo-type dataset"):
        readers.read_source("pftlab-test/no-such-dataset", "train", revision="main")
    with pytest.raises(DataError, match=r"model 'pftlab-test/no-such-model' is not in the local .* 'model.pretrained.id'"):
        hub.pretrained_tokenizer({"id": "pftlab-test/no-such-model"})
    assert time.time() - start < 30  # no retry loop (without HF_HUB_OFFLINE the libraries retry ~50 s)
    with pytest.raises(DataError, match="package 'no_such_pkg' is not installed"):
        hub.package_dir("no_such_pkg")
