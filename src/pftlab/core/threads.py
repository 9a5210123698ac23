"""How many CPU threads a process of ours uses, how its idle threads wait and how MKL sums: decided here, once.

Every stage, test worker and bench shares the machine's cores with whatever else runs. Two rules keep them
from fighting (3-15x slowdowns measured beside one busy neighbour on 2 cores, docs/ARCHITECTURE.md):

- **Threads = the cores this process may use, divided among the processes that share them.** The cores are
  the scheduler affinity (a container's or `taskset`'s limit, not the host's count); the sharers are the
  processes of a launch on this machine (`LOCAL_WORLD_SIZE` from torchrun, accelerate or deepspeed) and the
  pytest-xdist workers (`PYTEST_XDIST_WORKER_COUNT`). `OMP_NUM_THREADS`, when the user (or a launcher) set it,
  wins; one this module set in a parent process is decided again in the child, whose sharers may differ.
- **Idle OpenMP threads sleep** (`OMP_WAIT_POLICY=PASSIVE`) instead of spinning for the next parallel region,
  so a core another process needs is given back. OpenMP reads the policy once, when torch loads it: this module
  runs from `pftlab/__init__.py`, and every stage imports pftlab before torch (tests/test_threads.py checks).

Neither rule changes a number on a machine where the count equals torch's own default (one thread per physical
core): the wait policy never does, and a thread count does only where it differs (float sums split otherwise).

One more rule keeps the numbers themselves fixed: **MKL sums the same way every run** (`MKL_CBWR=AUTO,STRICT`,
Intel's conditional numerical reproducibility: fixed blocking, deterministic reductions, static scheduling, no
dependence on memory alignment). Without it MKL may choose by alignment and load, the likely cause of a fresh clone
on an AMD EPYC not reproducing that machine's own `dvc.lock`. AUTO keeps each CPU's fastest path at no cost (SFT
stage 35.5 s vs 34.6-36.3 s without it), so numbers repeat on one CPU kind, not across kinds (an AVX-512 Xeon and
an EPYC differ at float rounding). `MKL_CBWR=COMPATIBLE` puts MKL on one path for every x86 CPU at twice the
time (72 s), though torch's own vectorised kernels still follow the CPU. A user's `MKL_CBWR` wins.
"""
import os
import sys

WAIT_POLICY = "PASSIVE"
MKL_REPRODUCIBLE = "AUTO,STRICT"
OURS = "PFTLAB_OMP_NUM_THREADS"  # the count this module wrote into OMP_NUM_THREADS: not the user's word


def usable_cores() -> int:
    """Cores this process may run on: its affinity where the OS tells it, else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        return os.cpu_count() or 1


def _positive_int(env, key: str):
    value = env.get(key, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def sharing_processes(env=os.environ) -> int:
    """How many processes of ours run side by side on these cores: a launch's local processes times test workers."""
    launch = _positive_int(env, "LOCAL_WORLD_SIZE") or 1
    workers = _positive_int(env, "PYTEST_XDIST_WORKER_COUNT") or 1
    return launch * workers


def thread_count(env=os.environ, cores=None) -> int:
    """Torch intra-op threads for this process: `OMP_NUM_THREADS` when set, else its share of the usable cores."""
    explicit = _positive_int(env, "OMP_NUM_THREADS")
    if explicit is not None and env.get("OMP_NUM_THREADS") != env.get(OURS):
        return explicit
    cores = usable_cores() if cores is None else cores
    return max(1, cores // sharing_processes(env))


def cooperate(env=os.environ) -> int:
    """Set this process's (and its children's) thread count, wait policy and MKL mode; returns the thread count.

    Writes the environment so that processes started from here (a stage under `dvc repro`, a launcher's
    workers) inherit the same decision, and sets torch's count directly where torch is already loaded.
    """
    threads = thread_count(env)
    if not env.get("OMP_WAIT_POLICY"):  # unset or empty: the user chose nothing
        env["OMP_WAIT_POLICY"] = WAIT_POLICY
    if not env.get("MKL_CBWR"):
        env["MKL_CBWR"] = MKL_REPRODUCIBLE
    env["OMP_NUM_THREADS"] = env[OURS] = str(threads)
    torch = sys.modules.get("torch") if env is os.environ else None  # another env describes another process
    if torch is not None and hasattr(torch, "set_num_threads") and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
