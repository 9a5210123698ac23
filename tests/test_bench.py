"""The benchmark runs (at toy size) and its non-timing numbers hold: what it times is not tested."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script: str, tmp_path, *args) -> dict:
    """Run bench/<script> from the repository root with `--out` in tmp_path; its JSON result."""
    out = tmp_path / "result.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args, "--out", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(out.read_text())


def test_scale_knobs_bench_runs_and_its_memory_numbers_hold(tmp_path):
    result = run_bench("scale_knobs.py", tmp_path, "--rows", "4", "--prompt-tokens", "8", "--new-tokens", "8",
                       "--repeats", "1")
    assert result["weight_copies_frozen_reference"] == 2.0
    assert 1.0 < result["weight_copies_lora_reference"] < 1.1  # the adapter only
    assert result["gradient_checkpointing_saved_activations_ratio"] < 0.5  # layers' activations recomputed
    assert all(result[k] > 0 for k in ("kv_cache_speedup", "gradient_checkpointing_time_ratio",
                                       "four_micro_batches_time_ratio", "lora_reference_time_ratio"))


def test_bandit_seeds_bench_runs(tmp_path):
    result = run_bench("bandit_seeds.py", tmp_path, "--seeds", "2", "--collections", "1")
    assert result["seeds"] == 2 and result["speedup"] > 0


def test_collection_split_bench_runs_both_ways(tmp_path):
    result = run_bench("collection_split.py", tmp_path, "--prompts", "4", "--k", "2", "--new-tokens", "4",
                       "--repeats", "1")
    assert result["processes"] == 2 and result["seconds_one_process"] > 0 and result["seconds_2_processes"] > 0
