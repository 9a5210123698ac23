"""The benchmark runs (at toy size) and its non-timing numbers hold: what it times is not tested."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_bandit_cell_seeds_bench_gives_the_stages_numbers_for_its_seeds(tmp_path):
    result = run_bench("bandit_cell_seeds.py", tmp_path, "--method", "best_of_n", "--seeds", "40")
    stage = json.loads((ROOT / "metrics/didactic/bandit.json").read_text())["runs"]["misaligned/best_of_n/offline"]
    # seeds 0-19 are the stage's (equal on one CPU kind; another kind's float rounding moves them slightly)
    assert result["means_of_20_seed_windows"][0] == pytest.approx(sum(stage["final_reward"]) / 20, abs=0.01)
    assert len(result["means_of_20_seed_windows"]) == 2 and result["ci95_over_seeds"][0] <= result["final_reward_mean"]


def test_collection_split_bench_runs_both_ways(tmp_path):
    result = run_bench("collection_split.py", tmp_path, "--prompts", "4", "--k", "2", "--new-tokens", "4",
                       "--repeats", "1")
    assert result["processes"] == 2 and result["seconds_one_process"] > 0 and result["seconds_2_processes"] > 0


def test_busy_neighbour_bench_times_a_command_three_ways(tmp_path):
    command = f"{sys.executable} -c 'import pftlab, torch; torch.randn(64, 64) @ torch.randn(64, 64)'"
    result = run_bench("busy_neighbour.py", tmp_path, "--command", command)
    assert result["command"] == command and result["threads"] >= 1
    assert all(result[k] > 0 for k in ("seconds_alone", "seconds_beside_neighbour", "seconds_beside_neighbour_active_wait",
                                       "ratio_beside_neighbour", "ratio_beside_neighbour_active_wait"))
    quicker = run_bench("busy_neighbour.py", tmp_path, "--command", command, "--no-active-wait")  # long commands
    assert quicker["ratio_beside_neighbour"] > 0 and quicker["seconds_beside_neighbour_active_wait"] is None


def test_repro_timeline_splits_wall_time_into_work_startup_and_the_rest():
    sys.path.insert(0, str(ROOT / "bench"))
    from repro_timeline import timeline

    lines = [(0.5, "Running stage 'prepare':"), (12.0, "stage 'prepare' done in 3.0s -> metrics/prepare.json"),
             (15.0, "Stage 'tokenizer' didn't change, skipping"), (16.0, "Running stage 'sft':"),
             (40.0, "stage 'sft' done in 20.0s -> metrics/sft.json"), (44.0, "")]
    metrics = {"metrics/prepare.json": {"seconds": 3.0, "startup_seconds": 8.0},
               "metrics/sft.json": {"seconds": 20.0, "startup_seconds": 3.5}}
    result = timeline(lines, metrics.__getitem__)
    assert result["wall_seconds"] == 44.0 and result["stages_run"] == 2
    assert result["work_seconds"] == 23.0 and result["startup_seconds"] == 11.5
    assert result["dvc_and_exit_seconds"] == 9.5  # 44 - 23 - 11.5
    assert result["share_outside_work"] == round(1 - 23 / 44, 3) and result["per_stage_outside_work"] == 10.5
    assert [s["stage"] for s in result["stages"]] == ["prepare", "sft"]
    # a seeds@ stage: one DVC stage (one process, one start-up) reporting a run per seed and kind
    lines += [(45.0, "Running stage 'seeds@dpo':"), (60.0, "stage 'policy_seed@dpo-1' done in 6.0s -> a.json"),
              (70.0, "stage 'evaluate_seed@dpo-1' done in 4.0s -> b.json"), (72.0, "")]
    metrics |= {"a.json": {"seconds": 6.0, "startup_seconds": 8.0}, "b.json": {"seconds": 4.0, "startup_seconds": 0.0}}
    result = timeline(lines, metrics.__getitem__)
    assert result["stages_run"] == 3 and result["runs"] == 4 and result["work_seconds"] == 33.0
    assert result["per_stage_outside_work"] == round((72 - 33) / 3, 1)
