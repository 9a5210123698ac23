"""Training seeds as a pipeline dimension: where a seed's files live, how the report reads them back, and
the aggregation over seeds, on synthetic metric files."""
import json

import pytest

from pftlab.core.errors import DataError
from pftlab.core.paths import Task, seeds_stage, task_from_argv
from pftlab.core.stats import mean_ci
from pftlab.reporting import claims, seeds
from pftlab.reporting.results import seed_values
from pftlab.reporting.tables import seeds_table


def test_a_seed_run_has_its_own_files_and_shares_the_task_data():
    task = Task(seed=2)
    assert task.policy("dpo") == "models/training_seeds/dpo/s2"  # one folder per algorithm: the outs of seeds@dpo
    assert task.metrics("eval", "dpo") == "metrics/training_seeds/dpo/s2/eval.json"
    assert task.metrics("policy", "dpo") == "metrics/training_seeds/dpo/s2/policy.json"
    assert task.eval_samples("dpo") == "data/training_seeds/dpo/s2/eval.jsonl"
    assert task.curve("policy", "dpo") == "metrics/curves/training_seeds/dpo/policy_s2.csv"
    assert task.stage("policy", "dpo") == "policy_seed@dpo-2" and task.stage("evaluate", "dpo") == "evaluate_seed@dpo-2"
    assert seeds_stage("dpo") == "seeds@dpo"
    assert (task.pairs, task.reward_model, task.gold) == (Task().pairs, Task().reward_model, Task().gold)  # shared
    assert task_from_argv(["dpo"]).policy("dpo") == "models/policy/dpo"
    assert task_from_argv(["dpo", "--variant", "mode_length"]) == Task("mode_length")
    with pytest.raises(SystemExit):
        task_from_argv(["dpo", "--variant"])


def write(root, path, values):
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(json.dumps(values))


def test_pipeline_seed_runs_and_their_aggregation(tmp_path):
    gold = {("dpo", 1): -40.0, ("dpo", 2): -35.0, ("pref_ft", 1): -22.0, ("pref_ft", 2): -20.0}
    for (name, seed), g in gold.items():
        write(tmp_path, Task(seed=seed).metrics("eval", name), {"gold_reward": g, "kl_k1": 10.0 * seed, "win_rate_vs_sft": 0.5})
    runs = seeds.pipeline_seed_runs({"algorithms": ["pref_ft", "dpo"], "seeds": [1, 2]}, "min_length", tmp_path)
    assert [r["seed"] for r in runs] == [1, 2]
    assert runs[1]["tasks"]["min_length"]["dpo"] == {"gold_reward": -35.0, "kl_k1": 20.0, "win_rate_vs_sft": 0.5}
    evals = {"min_length": {"sft": {"gold_reward": -30.0, "kl_k1": 0.0}, "dpo": {"gold_reward": -45.0, "kl_k1": 5.0},
                            "pref_ft": {"gold_reward": -21.0, "kl_k1": 1.0}, "ppo": {"gold_reward": -4.0, "kl_k1": 3.0}}}
    gold_s, kl_s = seed_values(evals, runs, evals)
    assert gold_s == {"min_length": {"dpo": [-45.0, -40.0, -35.0], "pref_ft": [-21.0, -22.0, -20.0]}}  # only seeded policies
    assert kl_s["min_length"]["dpo"] == [5.0, 10.0, 20.0]
    table = "\n".join(seeds_table(evals, 0, runs))
    m, half = mean_ci([-45.0, -40.0, -35.0])
    assert "| seed 0 | seed 1 | seed 2 |" in table
    assert f"| min_length | dpo | -45.00 | -40.00 | -35.00 | {m:.2f} [{m - half:.2f}, {m + half:.2f}] |" in table
    # claim 3 over training seeds: offline DPO - offline maximum likelihood, paired by seed
    checks = claims.llm_claims(gold_s["min_length"], kl_s["min_length"], "min_length", "training seeds (0, 1, 2)")["3"]
    assert checks[0]["n"] == 3 and checks[0]["mean"] == pytest.approx(mean_ci([-24.0, -18.0, -15.0])[0])
    assert checks[0]["over"] == "training seeds (0, 1, 2)"


def test_a_missing_seed_evaluation_names_the_stage_to_run(tmp_path):
    with pytest.raises(DataError, match="dvc repro seeds@dpo"):
        seeds.pipeline_seed_runs({"algorithms": ["dpo"], "seeds": [1]}, "min_length", tmp_path)


@pytest.mark.parametrize("change, message", [({"algorithms": ["dpo", "rloo"]}, "rloo, not in 'algorithms'"),
                                             ({"seeds": [0, 1]}, "repeats 'seed'"),
                                             ({"seeds": [1, 2, 1]}, "lists 1 more than once"),
                                             ({"seeds": []}, "'training_seeds.seeds' is empty"),
                                             ({"algorithms": ["dpoo"]}, "unknown algorithm 'dpoo'")])
def test_training_seeds_params_are_checked_before_any_work(change, message):
    from pftlab.core.errors import ParamError
    from pftlab.core.params import Params, load_params

    tree = load_params("params.yaml").tree
    tree = {**tree, "algorithms": ["pref_ft", "dpo", "online_dpo"], "training_seeds": {**tree["training_seeds"], **change}}
    with pytest.raises(ParamError, match=message):
        Params(tree).check("training_seeds")


def test_a_bad_seed_list_stops_the_first_stage_that_runs(tmp_path):
    """`training_seeds` is not a param of prepare, yet a bad list stops it (one line, no traceback) before any
    work: otherwise the error would surface only in the report stage, after every policy had trained."""
    import subprocess
    import sys

    import yaml

    from pftlab.core.params import load_params

    tree = load_params("params.yaml").tree
    tree["training_seeds"] = {"algorithms": ["ppo_typo"], "seeds": [1]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    code = "from pftlab.core.stage import run_stage\nrun_stage('probe', ['seed'], lambda p, t: {}, 'metrics/probe.json')"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PFTLAB_MLFLOW": "0"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "'training_seeds.algorithms' names unknown algorithm 'ppo_typo'" in out.stderr
    assert not (tmp_path / "metrics" / "probe.json").exists()
