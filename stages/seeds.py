"""Stage seeds@<algorithm> (one per policy of `algorithms`): policy <algorithm> again with each seed of
`training_seeds.seeds` (the same SFT model,
pairs and reward model as policy@<algorithm>), trained and then evaluated on the held-out prompts, all in one
process: one start-up and one DVC step per algorithm, not two per seed. Each run is the run of policy@ /
evaluate@ (training/policy_run.py, evaluation/run.py) with the seed's own paths (core/paths.py):
models/training_seeds/<algorithm>/s<seed>/, metrics/training_seeds/<algorithm>/s<seed>/{policy,eval}.json,
data/training_seeds/<algorithm>/s<seed>/eval.jsonl, metrics/curves/training_seeds/<algorithm>/policy_s<seed>.csv.
In MLflow each seed is a policy run of its own ("dpo seed 1") with its policy_seed@ and evaluate_seed@ runs.
With no seeds listed the stage writes its four output folders empty, as DVC expects them."""
import pftlab  # noqa: F401  first: threads and OpenMP's wait policy are set before torch loads (core/threads.py)

# isort: split
import sys
from pathlib import Path

from pftlab.core.checkpoint import remove_checkpoint
from pftlab.core.distributed import is_main_process
from pftlab.core.errors import PftlabError
from pftlab.core.params import load_params
from pftlab.core.paths import Task, seed_folders, seeds_stage
from pftlab.core.stage import run_stage
from pftlab.evaluation import run as evaluation
from pftlab.training import policy_run

if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    try:  # a bad seed list is refused here, before any work
        seeds = load_params().check_stage_lists()["training_seeds.seeds"]
    except PftlabError as err:
        sys.exit(f"error in stage '{seeds_stage(name)}': {err}")
    tasks = [Task(seed=s) for s in seeds]
    if not tasks and is_main_process():
        for folder in seed_folders(name):
            Path(folder).mkdir(parents=True, exist_ok=True)
    for task in tasks:  # every process of a launch trains; then the main process evaluates
        run_stage(task.stage("policy", name), lambda p, tracker, task=task: policy_run.train_policy_run(p, tracker, name, task),
                  seed_key=None, models=[task.policy(name)], keep_checkpoint=True)
    if is_main_process():
        for task in tasks:
            run_stage(task.stage("evaluate", name), lambda p, tracker, task=task: evaluation.evaluate_policy(p, name, task),
                      seed_key=evaluation.SEED_KEY, results_prefix="eval/")
    for task in tasks:
        remove_checkpoint(task.stage("policy", name))
