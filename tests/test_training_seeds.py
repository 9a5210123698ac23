"""Training seeds as a pipeline dimension: where a seed's files live, how the report reads them back, and
the aggregation over seeds, on synthetic metric files."""
import json

import pytest

from pftlab.core.errors import DataError
from pftlab.core.paths import Task, seed_folders, seeds_stage, task_from_argv
from pftlab.core.stats import mean_ci
from pftlab.reporting import claims, seeds
from pftlab.reporting.results import seed_values
from pftlab.reporting.tables import seeds_table


def test_a_seed_run_has_its_own_files_and_shares_the_task_data():
    task = Task(seed=2)
    assert task.policy("dpo") == "models/training_seeds/dpo/s2"  # one folder per algorithm: the outs of seeds@dpo
    assert task.metrics("evaluate", "dpo") == "metrics/training_seeds/dpo/s2/eval.json"
    assert task.metrics("policy", "dpo") == "metrics/training_seeds/dpo/s2/policy.json"
    assert task.eval_samples("dpo") == "data/training_seeds/dpo/s2/eval.jsonl"
    assert task.curve("policy", "dpo") == "metrics/curves/training_seeds/dpo/policy_s2.csv"
    assert task.stage("policy", "dpo") == "policy_seed@dpo-2" and task.stage("evaluate", "dpo") == "evaluate_seed@dpo-2"
    assert seeds_stage("dpo") == "seeds@dpo"
    for path in (task.policy("dpo"), task.eval_samples("dpo"), task.metrics("evaluate", "dpo"), task.curve("policy", "dpo")):
        assert any(path.startswith(folder + "/") for folder in seed_folders("dpo"))  # inside the stage's outs
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
        write(tmp_path, Task(seed=seed).metrics("evaluate", name), {"gold_reward": g, "kl_k1": 10.0 * seed, "win_rate_vs_sft": 0.5})
    runs = seeds.pipeline_seed_runs(["pref_ft", "dpo"], {"seeds": [1, 2]}, "min_length", tmp_path)
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
        seeds.pipeline_seed_runs(["dpo"], {"seeds": [1]}, "min_length", tmp_path)
    assert seeds.pipeline_seed_runs(["dpo"], {"seeds": []}, "min_length", tmp_path) == []  # one seed per policy


@pytest.mark.parametrize("change, message", [({"algorithms": ["dpo"]}, "'training_seeds.algorithms' is no longer a key"),
                                             ({"seeds": [0, 1]}, "repeats 'seed'"),
                                             ({"seeds": [1, 2, 1]}, "lists 1 more than once"),
                                             ({"seeds": [1, -2]}, "training_seeds.seeds"),
                                             ({"seeds": "1"}, "training_seeds.seeds")])
def test_training_seeds_params_are_checked_before_any_work(change, message):
    from pftlab.core.errors import ParamError
    from pftlab.core.params import Params, load_params

    tree = load_params("params.yaml").tree
    tree = {**tree, "algorithms": ["pref_ft", "dpo", "online_dpo"], "training_seeds": {**tree["training_seeds"], **change}}
    with pytest.raises(ParamError, match=message):
        Params(tree).check("training_seeds")


def test_no_training_seeds_is_allowed():
    from pftlab.core.params import Params, load_params

    tree = load_params("params.yaml").tree
    Params({**tree, "training_seeds": {"seeds": []}}).check("training_seeds")


def test_a_bad_seed_list_stops_the_first_stage_that_runs(tmp_path):
    """`training_seeds` is not a param of prepare, yet a bad list stops it (one line, no traceback) before any
    work: otherwise the error would surface only in the report stage, after every policy had trained."""
    import subprocess
    import sys

    import yaml

    from pftlab.core.params import load_params

    tree = load_params("params.yaml").tree
    tree["training_seeds"] = {"seeds": [1, 1]}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    code = "from pftlab.core.stage import run_stage\nrun_stage('tokenizer', lambda p, t: {})"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PFTLAB_MLFLOW": "0"})
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "'training_seeds.seeds' lists 1 more than once" in out.stderr
    assert not (tmp_path / "metrics" / "tokenizer.json").exists()


def _eval_files(root, gold: dict, seeds_: list):
    """Per-prompt samples of seed 0 and the eval summaries of every seed, from {(policy, seed): [per-prompt gold]}."""
    for (name, seed), per_prompt in gold.items():
        task = Task() if seed == 0 else Task(seed=seed)
        rows = [{"prompt_index": i, "gold": g, "kl_k1": 1.0} for i, g in enumerate(per_prompt)]
        (root / task.eval_samples(name)).parent.mkdir(parents=True, exist_ok=True)
        (root / task.eval_samples(name)).write_text("".join(json.dumps(r) + "\n" for r in rows))
        write(root, task.metrics("evaluate", name), {"gold_reward": sum(per_prompt) / len(per_prompt), "kl_k1": 1.0})


def test_one_seed_over_prompts_never_decides_where_training_seeds_exist(tmp_path):
    """Claim 3 (offline DPO above offline maximum likelihood): seed 0 alone is clearly against it over prompts, the
    three training seeds are inconclusive. The verdict is the seeds' (inconclusive), the prompts' check a second line;
    with one seed only, the prompts' check decides."""
    gold = {("pref_ft", 0): [-20.0, -21.0, -19.0, -20.5], ("dpo", 0): [-30.0, -31.0, -29.0, -30.5],
            ("pref_ft", 1): [-20.0] * 4, ("dpo", 1): [-10.0] * 4, ("pref_ft", 2): [-20.0] * 4, ("dpo", 2): [-19.0] * 4,
            ("sft", 0): [-25.0] * 4}
    _eval_files(tmp_path, gold, [0, 1, 2])
    tasks = {"min_length": (Task(), ["sft", "pref_ft", "dpo"])}
    evals = {"min_length": {n: json.loads((tmp_path / Task().metrics("evaluate", n)).read_text()) for n in ("sft", "pref_ft", "dpo")}}
    runs = seeds.pipeline_seed_runs(["pref_ft", "dpo"], {"seeds": [1, 2]}, "min_length", tmp_path)
    parts, over = claims.llm_claim_parts(tasks, evals, 0, runs, tmp_path)
    verdicts = claims.all_claims(llm_parts=parts)["3"]
    one_seed = [c for c in verdicts["checks"] if "one training seed" in c["over"]]
    by_seeds = [c for c in verdicts["checks"] if c["over"].startswith("training seeds")]
    assert one_seed[0]["verdict"] == claims.NOT_REPRODUCED and one_seed[0]["decides"] is False
    assert by_seeds[0]["verdict"] == claims.INCONCLUSIVE and by_seeds[0]["n"] == 3
    assert verdicts["verdict"] == claims.INCONCLUSIVE and "decide the verdict" in over
    parts, _ = claims.llm_claim_parts(tasks, evals, 0, [], tmp_path)
    assert claims.all_claims(llm_parts=parts)["3"]["verdict"] == claims.NOT_REPRODUCED


def test_dpo_likelihood_check_is_over_seeds_where_they_exist():
    evals = [{"logp_chosen_change": -2.0, "logp_chosen_change_sd": 0.5, "likelihood_pairs": 100},
             {"logp_chosen_change": 1.0}, {"logp_chosen_change": -0.5}]
    over_seeds, one = claims.dpo_likelihood_check(evals, [0, 1, 2])
    assert over_seeds["n"] == 3 and over_seeds["mean"] == pytest.approx(0.5) and over_seeds["verdict"] == claims.INCONCLUSIVE
    assert one["verdict"] == claims.REPRODUCED and one["decides"] is False  # seed 0's pairs: a second line
    assert claims.combine([over_seeds, one]) == claims.INCONCLUSIVE
    only = claims.dpo_likelihood_check(evals[:1], [0])
    assert len(only) == 1 and only[0].get("decides", True) and only[0]["over"] == "preference pairs, training seed 0"


def test_no_training_seeds_leaves_the_seeds_stage_its_empty_folders(tmp_path):
    """With `training_seeds.seeds: []` stage seeds@<algorithm> trains nothing and writes its four output folders
    empty (DVC tracks an empty folder), so `dvc repro` of the default graph still succeeds."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from pftlab.core.params import load_params

    tree = load_params("params.yaml").tree
    tree["training_seeds"] = {"seeds": []}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    script = Path(__file__).resolve().parents[1] / "stages" / "seeds.py"
    out = subprocess.run([sys.executable, str(script), "dpo"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PFTLAB_MLFLOW": "0"})
    assert out.returncode == 0, out.stderr
    for folder in seed_folders("dpo"):
        assert (tmp_path / folder).is_dir() and not any((tmp_path / folder).iterdir())
    assert not (tmp_path / "metrics" / "training_seeds" / "dpo" / "s1").exists()


def test_dpo_step_table_reads_the_same_pairs_change_from_the_evaluations():
    """The curve's log pi(y_w) is each step's own minibatch; the table's likelihood columns are the evaluation's
    change on the same training pairs, per seed."""
    from pftlab.reporting.tables import dpo_diagnosis_text

    curves = {"seed 0": [{"logp_chosen": -50.0, "response_tokens": 20.0}, {"logp_chosen": -10.0, "response_tokens": 5.0, "kl_k1": 3.0}]}
    dpo = {"gold_reward": -5.0, "response_length": 5.0, "eos_fraction": 1.0, "kl_k1": 3.0, "likelihood_pairs": 128,
           "logp_chosen_change": -0.5, "logp_rejected_change": -2.25}
    sft = {"gold_reward": -20.0, "response_length": 20.0, "eos_fraction": 0.5}
    table = "\n".join(dpo_diagnosis_text(curves, sft, dpo, {"seed 0": dpo}))
    assert "| seed 0 | -0.50 | -2.25 | 20.0 -> 5.0 | 3.0 |" in table and "same 128 training pairs" in table
    assert "-50.0" not in table  # the minibatch values are not compared as if they were the same pairs


def test_win_rates_per_prompt_from_saved_samples_and_the_self_win_rate_sentence(tmp_path):
    from pftlab.core.pipeline import EVAL_REFERENCE
    from pftlab.reporting.results import win_rates_per_prompt
    from pftlab.reporting.tables import self_win_rate_sentence

    write(tmp_path, Task().gold, {"reward": "min_length"})
    lengths = [3, 5, 4, 4]  # prompt 0: wins (2 < 3), loses (6 > 5); prompt 1: ties (4 = 4), wins (1 < 4)
    (tmp_path / "data/eval").mkdir(parents=True, exist_ok=True)
    (tmp_path / EVAL_REFERENCE).write_text("".join(json.dumps({"length": n}) + "\n" for n in lengths))
    rows = [{"prompt_index": i // 2, "gold": -g} for i, g in enumerate([2, 6, 4, 1])]
    (tmp_path / Task().eval_samples("sft")).write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert win_rates_per_prompt(tmp_path, Task(), "sft") == [0.5, 0.75]
    sentence = self_win_rate_sentence([0.5, 0.75])
    assert "0.625" in sentence and "over 2 held-out prompts" in sentence
