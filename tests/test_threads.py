"""Threads chosen in one place (core/threads.py): from affinity, the user's OMP_NUM_THREADS, launch processes and
test workers; OpenMP's wait policy set before torch loads in every stage."""
import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pftlab.core import threads

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("env, cores, expected", [
    ({}, 8, 8),                                                        # alone: every usable core
    ({"LOCAL_WORLD_SIZE": "2"}, 8, 4),                                 # torchrun / accelerate / deepspeed, 2 local processes
    ({"PYTEST_XDIST_WORKER_COUNT": "2"}, 2, 1),                        # two test workers on 2 cores
    ({"PYTEST_XDIST_WORKER_COUNT": "2", "LOCAL_WORLD_SIZE": "2"}, 8, 2),  # a launch inside a test worker
    ({"LOCAL_WORLD_SIZE": "4"}, 2, 1),                                 # more processes than cores: one thread each
    ({"OMP_NUM_THREADS": "3", "LOCAL_WORLD_SIZE": "2"}, 8, 3),          # the user's word wins
    ({"OMP_NUM_THREADS": "0"}, 8, 8),                                  # not a thread count: ignored
    ({"OMP_NUM_THREADS": "four"}, 8, 8),
    ({"OMP_NUM_THREADS": "2", threads.OURS: "2", "PYTEST_XDIST_WORKER_COUNT": "2"}, 2, 1),  # a parent's choice: decided again
])
def test_thread_count_is_the_usable_cores_shared_among_our_processes(env, cores, expected):
    assert threads.thread_count(env, cores=cores) == expected


def test_cooperate_writes_the_choice_for_children_and_keeps_a_users_wait_policy_and_mkl_mode():
    env = {"PYTEST_XDIST_WORKER_COUNT": str(threads.usable_cores())}
    assert threads.cooperate(env) == 1
    assert env["OMP_NUM_THREADS"] == env[threads.OURS] == "1" and env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert env["MKL_CBWR"] == "AUTO,STRICT"
    env = {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE"}
    threads.cooperate(env)
    assert env["OMP_WAIT_POLICY"] == "ACTIVE" and env["OMP_NUM_THREADS"] == "1" and env["MKL_CBWR"] == "COMPATIBLE"


def test_affinity_limits_the_cores_and_pftlab_sets_torch_before_it_loads():
    """A process pinned to one core gets one thread, and OpenMP sees the passive wait policy: both are in the
    environment when torch is first imported, after pftlab."""
    code = ("import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
            "[os.environ.pop(k, None) for k in ('OMP_NUM_THREADS', 'OMP_WAIT_POLICY', 'PYTEST_XDIST_WORKER_COUNT', "
            f"'LOCAL_WORLD_SIZE', 'MKL_CBWR', '{threads.OURS}')]; "
            "import pftlab, torch; print(torch.get_num_threads(), os.environ['OMP_WAIT_POLICY'], os.environ['MKL_CBWR'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "PASSIVE", "AUTO,STRICT"]


def first_import(path: Path) -> str:
    node = next(n for n in ast.parse(path.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom)))
    return node.names[0].name if isinstance(node, ast.Import) else node.module


@pytest.mark.parametrize("stage", sorted(p.name for p in (ROOT / "stages").glob("*.py")))
def test_every_stage_imports_pftlab_before_anything_that_loads_torch(stage):
    assert first_import(ROOT / "stages" / stage) == "pftlab"


def test_the_test_workers_take_their_share():
    import torch

    assert torch.get_num_threads() == threads.thread_count()
    assert os.environ["OMP_WAIT_POLICY"]  # pftlab's PASSIVE unless the user chose one
