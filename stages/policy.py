"""Stage policy@<algorithm> (policy_variant@<gold>-<algorithm> with --variant <gold>): fine-tune the SFT policy with
one algorithm of the table on the task's pairs and reward model (training/policy_run.py; <task>/policy/<algorithm>/,
metrics/[variants/<gold>/]policy/<algorithm>.json and curves/policy_<algorithm>.csv; core/paths.py). Training
seeds of the same policy: stage seeds@<algorithm> (stages/seeds.py)."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import sys

from pftlab.core.paths import task_from_argv
from pftlab.core.stage import run_stage
from pftlab.training.policy_run import train_policy_run

if __name__ == "__main__":
    name, task = sys.argv[1] if len(sys.argv) > 1 else "", task_from_argv()
    run_stage(task.stage("policy", name), lambda p, tracker: train_policy_run(p, tracker, name, task),
              models=[task.policy(name)])
