"""The papers' setups as params presets: valid, naming their Hugging Face ids, and failing fast and
clearly when the hub is out of reach (as it is here) instead of hanging in a retry loop."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pftlab.core.params import check_algorithm_params, load_params

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "params" / "presets").glob("*.yaml"))
GPU_PRESETS = [p for p in PRESETS if p.stem != "hh-smollm"]


def test_every_preset_is_valid_and_names_its_model_and_data():
    assert {p.stem for p in PRESETS} >= {"hh-smollm", "tldr-pythia-1.4b", "tldr-pythia-2.8b", "alpacafarm-pythia-1.4b",
                                        "ultrafeedback-llama3-8b"}
    for path in PRESETS:
        p = load_params(path)
        p.check(*[k for k in p.tree if k != "algos"])
        for name in p["algorithms"] + p["variants.algorithms"]:
            check_algorithm_params(p, name)
        assert "/" in p["model.pretrained.id"]  # a hub id (org/name)
        assert p.get("data.source.id") or p["data.raw"]
    tldr = load_params(ROOT / "params" / "presets" / "tldr-pythia-1.4b.yaml")
    assert (tldr["algos.hypo.beta"], tldr["algos.hypo.lam"], tldr["policy.lr"], tldr["policy.batch_size"],
            tldr["algos.hypo.samples_per_prompt"], tldr["model.max_response_tokens"]) == (0.05, 1e-4, 3e-6, 64, 2, 53)


def run_stage_script(script, preset, tmp_path):
    tree = yaml.safe_load(preset.read_text())
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PFTLAB_MLFLOW": "0", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.time()
    out = subprocess.run([sys.executable, str(ROOT / "stages" / script)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    return out, time.time() - start, tree


@pytest.mark.parametrize("preset", [p for p in GPU_PRESETS if p.stem.startswith(("tldr-pythia-1.4b", "alpacafarm"))],
                         ids=lambda p: p.stem)  # one per loading path: hub dataset with / without a config
def test_offline_dataset_loading_fails_fast_naming_the_id(preset, tmp_path):
    out, seconds, tree = run_stage_script("prepare.py", preset, tmp_path)
    dataset = tree["data"]["source"]["id"]
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert f"dataset '{dataset}' is not in the local Hugging Face cache" in out.stderr and "hf download" in out.stderr
    assert seconds < 60 and not (tmp_path / "data" / "prepared").exists()


def test_offline_model_loading_fails_fast_naming_the_id(tmp_path):
    preset = ROOT / "params" / "presets" / "ultrafeedback-llama3-8b.yaml"
    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "prepared" / "sft_train.jsonl").write_text(json.dumps({"prompt": "Hi", "response": "Hello"}) + "\n")
    out, seconds, _ = run_stage_script("tokenizer.py", preset, tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "model 'meta-llama/Meta-Llama-3-8B-Instruct' is not in the local Hugging Face cache" in out.stderr
    assert "'model.pretrained.id'" in out.stderr and seconds < 60 and not (tmp_path / "models").exists()
