"""Stage evaluate@<name> (evaluate_variant@<gold>-<name> with --variant <gold>): held-out metrics of a policy under
the task's gold reward and reward model (evaluation/run.py). `sft` = the SFT baseline; the main task's
evaluate@sft also draws the reference samples every win rate is judged against. Writes
metrics/[variants/<gold>/]eval/<name>.json and data/[variants/<gold>/]eval/<name>.jsonl."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import sys

from pftlab.core.paths import task_from_argv
from pftlab.core.stage import run_stage
from pftlab.evaluation.run import SEED_KEY, evaluate_policy

if __name__ == "__main__":
    name, task = sys.argv[1] if len(sys.argv) > 1 else "", task_from_argv()
    run_stage(task.stage("evaluate", name), lambda p, tracker: evaluate_policy(p, name, task),
              seed_key=SEED_KEY, results_prefix="eval/")
