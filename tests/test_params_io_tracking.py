"""Params validation names the key; writes are atomic; a tracking failure never stops a stage."""
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pftlab.core import tracking
from pftlab.core.errors import ParamError
from pftlab.core.io import atomic_dir, atomic_write_json
from pftlab.core.params import Params, check_algorithm_params, check_batch, load_params
from pftlab.core.tracking import Tracker

ROOT = Path(__file__).resolve().parents[1]


def default_params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_default_and_smoke_params_are_valid():
    for path in (ROOT / "params.yaml", ROOT / "params" / "smoke.yaml"):
        p = load_params(path)
        p.check(*[k for k in p.tree if k != "algos"])
        for name in p["algorithms"]:
            check_algorithm_params(p, name)


@pytest.mark.parametrize("key, value, message", [
    ("policy.lr", 0.0, "'policy.lr' must be a number > 0"),
    ("policy.lr", -1e-4, "'policy.lr' must be a number > 0"),
    ("sft.lr", float("nan"), "'sft.lr' must be a number > 0"),
    ("gold.reward", "max_length", "'gold.reward' must be one of min_length"),
    ("policy.batch_size", "32", "'policy.batch_size' must be a positive integer"),
])
def test_bad_values_name_the_key(key, value, message):
    tree = default_params()
    section, leaf = key.split(".")
    tree[section][leaf] = value
    with pytest.raises(ParamError, match=message.replace("(", r"\(")):
        Params(tree).check(section)


def test_bad_algorithm_params():
    tree = default_params()
    tree["algos"]["dpo"]["beta"] = 0
    with pytest.raises(ParamError, match="'algos.dpo.beta' must be a number > 0"):
        check_algorithm_params(Params(tree), "dpo")
    tree["algorithms"] = ["dpo", "ppo2"]
    with pytest.raises(ParamError, match="unknown algorithm 'ppo2'"):
        Params(tree).check("algorithms")
    with pytest.raises(ParamError, match="unknown algorithm"):
        check_algorithm_params(Params(tree), "ppo2")


def test_misspelt_key_gets_a_suggestion():
    tree = default_params()
    tree["policy"]["lrr"] = 1e-4
    with pytest.raises(ParamError, match=r"unknown key 'policy.lrr' \(did you mean 'policy.lr'\?\)"):
        Params(tree).check("policy")


def test_batch_larger_than_data():
    with pytest.raises(ParamError, match="'policy.batch_size' = 64 is larger than the 10 preference pairs"):
        check_batch("policy.batch_size", 64, 10, "preference pairs")


def test_stage_with_bad_param_exits_cleanly_before_work(tmp_path):
    tree = default_params()
    tree["algos"]["dpo"]["beta"] = -0.1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tree))
    env = {**os.environ, "PFTLAB_MLFLOW": "0"}
    out = subprocess.run([sys.executable, str(ROOT / "stages" / "policy.py"), "dpo"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    assert "'algos.dpo.beta' must be a number > 0" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "metrics").exists()


def test_atomic_dir_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "model"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "weights").write_text("half")
            raise RuntimeError("killed")
    assert not target.exists() and list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("whole")
    assert (target / "weights").read_text() == "whole"
    with pytest.raises(ValueError):  # NaN is refused before anything is written
        atomic_write_json(tmp_path / "m.json", {"x": float("nan")})
    assert not (tmp_path / "m.json").exists()


def test_tracking_failure_warns_and_does_not_raise(tmp_path, monkeypatch):
    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    (tmp_path / "a_file").write_text("not a directory")  # the database path cannot be created under it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/a_file/mlflow.db")
    with pytest.warns(UserWarning, match="MLflow tracking disabled"):
        with Tracker("test", {"a": 1}) as t:
            t.log_metrics({"loss": 1.0}, step=0)
    assert not t.enabled


def test_tracking_logs_params_metrics_and_tags(tmp_path, monkeypatch):
    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with Tracker("sft", {"sft": {"lr": 0.001}}) as t:
        for step in range(3):
            t.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("pftlab").experiment_id], "tags.run_kind = 'stage'")[0]
    assert run.data.params["sft.lr"] == "0.001"
    assert run.data.tags["stage"] == "sft" and len(run.data.tags["pipeline_run"]) == 12
    assert [m.value for m in client.get_metric_history(run.info.run_id, "loss")] == [1.0, 0.5, 1.0 / 3]


@pytest.mark.parametrize("env, starts", [
    ({"DVC_STAGE": "policy@dpo"}, True),
    ({}, False),                                                                  # not a DVC stage
    ({"DVC_STAGE": "policy@dpo", "PFTLAB_MLFLOW": "0"}, False),                   # tracking off
    ({"DVC_STAGE": "policy@dpo", "RANK": "1"}, False),                            # only rank 0 tracks
    ({"DVC_STAGE": "policy@dpo", tracking.PRESTARTED: "123"}, False),             # a child of a stage that started one
])
def test_a_dvc_stage_starts_its_writer_with_its_process_and_its_tracker_takes_it(env, starts, tmp_path, monkeypatch):
    spawned = []
    monkeypatch.setattr(tracking, "_spawn_writer", lambda: spawned.append(object()) or subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read(); print('OK')"], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True))
    tracking.prestart_writer(env)
    assert len(spawned) == int(starts)
    if starts:  # inherited by the stage's children (and the writer), which start none
        assert env[tracking.PRESTARTED] == str(os.getpid())
    prestarted = tracking._prestarted
    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    with Tracker("sft", {}) as t:  # takes the prestarted writer instead of starting another
        assert t._writer is prestarted if starts else t._writer is not None
    assert len(spawned) == 1 and tracking._prestarted is None


def test_readme_algorithm_table_is_the_generated_one():
    from pftlab.algorithms.taxonomy import table_markdown

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- algorithm-table -->\n")[1].split("<!-- /algorithm-table -->")[0]
    assert block.strip() == table_markdown().strip()


def test_a_locked_tracking_database_warns_once_and_the_stage_goes_on(tmp_path, monkeypatch):
    """Another process holds sqlite's write lock on mlflow.db for the whole run: tracking gives up with one
    warning and logging is a no-op from then on."""
    import sqlite3
    import warnings

    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with Tracker("init", {}) as t:  # create the schema first, as an earlier stage would have
        t.log_metrics({"x": 1.0})
    monkeypatch.setenv("PFTLAB_MLFLOW_WAIT", "1")  # give up after a second (default: wait up to 300 s)
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with Tracker("sft", {"sft": {"lr": 0.001}}) as t:
                for step in range(3):
                    t.log_metrics({"loss": 1.0}, step=step)
                t.log_artifact(__file__)
        mine = [w for w in caught if "MLflow tracking disabled" in str(w.message)]
        assert len(mine) == 1 and "locked" in str(mine[0].message) and not t.enabled
    finally:
        lock.rollback()
        lock.close()


def test_a_briefly_locked_store_is_waited_for_and_the_run_lands(tmp_path, monkeypatch):
    """Two pipelines writing at once (`dvc queue start -j 2`): the second waits for sqlite's lock instead of
    dropping its run."""
    import sqlite3
    import threading
    import warnings

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with Tracker("init", {}) as t:
        t.log_metrics({"x": 1.0})
    lock = sqlite3.connect(tmp_path / "mlflow.db", timeout=0, check_same_thread=False)
    lock.execute("BEGIN EXCLUSIVE")
    threading.Timer(2.0, lambda: (lock.rollback(), lock.close())).start()  # the other writer finishes
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Tracker("sft", {"sft": {"lr": 0.001}}) as t:
            t.log_metrics({"loss": 0.5}, step=0)
    assert t.enabled and not [w for w in caught if "MLflow tracking disabled" in str(w.message)]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("pftlab")
    runs = client.search_runs([exp.experiment_id], "tags.stage = 'sft'")
    assert len(runs) == 1 and runs[0].data.metrics["loss"] == 0.5 and runs[0].info.status == "FINISHED"
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the runs table


def test_a_stage_in_a_dvc_temporary_workspace_logs_to_the_repositorys_store(tmp_path, monkeypatch):
    """`dvc exp run --queue` / `--temp` run the pipeline in <repo>/.dvc/tmp/exps/<name>/, deleted afterwards:
    its runs must land in <repo>/mlflow.db."""
    from mlflow.tracking import MlflowClient

    from pftlab.core.tracking import repository_root, tracking_uri

    workspace = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc123"
    workspace.mkdir(parents=True)
    assert repository_root(workspace) == (tmp_path / "repo").resolve() and repository_root(tmp_path) == tmp_path.resolve()
    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(workspace)
    assert tracking_uri() == f"sqlite:///{(tmp_path / 'repo').resolve() / 'mlflow.db'}"
    with Tracker("evaluate@dpo", {"eval": {"seed": 99}}) as t:
        t.log_metrics({"gold_reward": -3.0})
        (workspace / "m.json").write_text("{}")
        t.log_artifact(workspace / "m.json")
    assert not (workspace / "mlflow.db").exists() and not (workspace / "mlruns").exists()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'repo' / 'mlflow.db'}")
    run = client.search_runs([client.get_experiment_by_name("pftlab").experiment_id])[0]
    assert run.data.params["eval.seed"] == "99" and run.data.metrics["gold_reward"] == -3.0
    assert run.info.artifact_uri.startswith((tmp_path / "repo" / "mlruns").resolve().as_uri())


@pytest.fixture
def workspace_store(tmp_path, monkeypatch):
    """A workspace run (no DVC experiment) in `tmp_path`, tracked to its own mlflow.db, params `seed: 0`."""
    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    return tmp_path


def test_runs_are_nested_pipeline_policy_stage_with_inputs_models_and_held_out_results(tmp_path, workspace_store):
    """Two stages of one pipeline run (policy@dpo, then evaluate@dpo reading its model): one parent run with all
    params, one `dpo` run with the training params, the curves and the held-out results, a run per stage under
    it; inputs carry their DVC hashes from dvc.lock, and the trained policy is an MLflow model tagged with its."""
    from mlflow.tracking import MlflowClient

    from pftlab.core.tracking import algorithm_run_name

    everything = {"seed": 0, "policy": {"lr": 1e-4}, "algos": {"dpo": {"beta": 0.3}}, "eval": {"seed": 5}}
    lock = {"schema": "2.0", "stages": {
        "pairs": {"cmd": "x", "outs": [{"path": "data/pairs.jsonl", "md5": "a" * 32}]},
        "policy@dpo": {"cmd": "x", "deps": [{"path": "data/pairs.jsonl", "md5": "0" * 32},  # stale: pairs' out wins
                                             {"path": "src/pftlab/algorithms/losses.py", "md5": "c" * 32}],
                       "outs": [{"path": "models/policy/dpo", "md5": "b" * 32 + ".dir"}]},
        "evaluate@dpo": {"cmd": "x", "deps": [{"path": "models/policy/dpo", "md5": "0" * 36}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    with Tracker("policy@dpo", {"policy": {"lr": 1e-4}, "algos": {"dpo": {"beta": 0.3}}}, all_params=everything) as t:
        for step in range(3):
            t.log_metrics({"loss": 1.0 - step / 10}, step=step)
        t.log_metrics({"final/loss": 0.8}, to_policy_run=False)
        t.log_model("models/policy/dpo")
    with Tracker("evaluate@dpo", {"eval": {"seed": 5}}, all_params=everything) as t:
        t.log_results({"eval/gold_reward": -3.5, "eval/gold_reward_ci95": 0.25, "eval/policy": "dpo"})
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("pftlab")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    (parent_name,) = [n for n, r in runs.items() if r.data.tags["run_kind"] == "pipeline"]
    assert set(runs) == {parent_name, f"dpo ({parent_name})", "policy@dpo", "evaluate@dpo"}
    parent, dpo = runs[parent_name], runs[f"dpo ({parent_name})"]
    assert dpo.data.tags["policy_run"] == "dpo"
    assert parent_name == "params " + hashlib.sha256(b"seed: 0\n").hexdigest()[:6]  # not the commit: see below
    assert parent.data.params["algos.dpo.beta"] == "0.3" and parent.data.params["eval.seed"] == "5"
    assert dpo.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert {runs[s].data.tags["mlflow.parentRunId"] for s in ("policy@dpo", "evaluate@dpo")} == {dpo.info.run_id}
    assert dpo.data.params == {"policy.lr": "0.0001", "algos.dpo.beta": "0.3"}  # training params, not eval's
    assert dpo.data.metrics["eval/gold_reward"] == -3.5 and "final/loss" not in dpo.data.metrics
    assert dpo.data.tags["eval/gold_reward: rounded with CI"] == "-3.5 ± 0.25"  # what the runs table shows, rounded
    assert [m.value for m in client.get_metric_history(dpo.info.run_id, "loss")] == [1.0, 0.9, 0.8]
    assert runs["policy@dpo"].data.metrics["final/loss"] == 0.8
    assert {r.info.status for r in runs.values()} == {"FINISHED"}
    assert runs["policy@dpo"].data.tags["mlflow.source.git.commit"] == parent.data.tags["mlflow.source.git.commit"]
    assert runs["policy@dpo"].data.tags["mlflow.source.name"]
    inputs = {d.dataset.name: d.dataset.digest for d in runs["policy@dpo"].inputs.dataset_inputs}
    assert inputs == {"data/pairs.jsonl": "a" * 32}  # the producer's hash; code deps left out
    (model,) = client.search_logged_models([exp.experiment_id])
    assert model.name == "models-policy-dpo" and model.source_run_id == runs["policy@dpo"].info.run_id
    assert model.tags["dvc_md5"] == "b" * 32 + ".dir"  # tagged when evaluate@dpo read it
    assert [m.model_id for m in client.get_run(runs["evaluate@dpo"].info.run_id).inputs.model_inputs] == [model.model_id]
    assert [m.model_id for m in client.get_run(dpo.info.run_id).outputs.model_outputs] == [model.model_id]
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]  # a commit between two `dvc repro` calls
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(git + ["commit", "-q", "--allow-empty", "-m", "x"], check=True)
    with Tracker("report", {"seed": 0}, all_params=everything):
        pass
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.run_name for r in runs if r.data.tags["run_kind"] == "pipeline"] == [parent_name]  # still one
    assert len({r.data.tags["mlflow.source.git.commit"] for r in runs}) == 2  # each stage run names its commit
    assert [algorithm_run_name(s) for s in ("prepare", "sft", "evaluate@sft", "policy_seed@online_dpo-2",
                                            "policy_variant@mode_length-dpo", "evaluate_variant_sft@mode_length")] == \
        [None, "sft", "sft", "online_dpo seed 2", "dpo on mode_length", "sft on mode_length"]


def test_a_refused_stage_leaves_no_run_and_a_failure_after_work_is_kept(tmp_path, workspace_store):
    """Trying data files: prepare refuses one (a DataError before it reports anything) and leaves no run, not even
    a pipeline run; once a stage of the pipeline has run, a later refusal leaves that run as it was; a stage that
    fails after logging keeps its FAILED run."""
    from mlflow.tracking import MlflowClient

    from pftlab.core.errors import DataError

    client = lambda: MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")  # noqa: E731
    statuses = lambda: sorted((r.info.run_name.split(" (")[0].split("-")[0], r.info.status)  # noqa: E731
                              for r in client().search_runs([client().get_experiment_by_name("pftlab").experiment_id]))
    with pytest.raises(DataError):
        with Tracker("prepare", {"seed": 0}, all_params={"seed": 0}):
            raise DataError("data/raw/x.jsonl: 9 of 10 rows malformed")
    assert statuses() == []
    with Tracker("policy@dpo", {"seed": 0}, all_params={"seed": 0}) as t:
        t.log_metrics({"loss": 1.0})
    before = statuses()
    with pytest.raises(DataError):
        with Tracker("evaluate@dpo", {"seed": 0}, all_params={"seed": 0}):
            raise DataError("refused")
    assert statuses() == before and {s for _, s in before} == {"FINISHED"} and len(before) == 3
    with pytest.raises(DataError):
        with Tracker("evaluate@dpo", {"seed": 0}, all_params={"seed": 0}) as t:
            t.log_metrics({"gold_reward": 1.0})
            raise DataError("stopped after work")
    assert ("evaluate@dpo", "FAILED") in statuses()


def test_system_metrics_on_request(tmp_path, monkeypatch):
    """PFTLAB_MLFLOW_SYSTEM_METRICS=true: the writer samples CPU and memory every 5 s into the stage's run."""
    import time

    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("PFTLAB_MLFLOW", "1")
    monkeypatch.setenv("PFTLAB_MLFLOW_SYSTEM_METRICS", "true")
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = MlflowClient(tracking_uri=uri)

    def stage_run():
        experiment = client.get_experiment_by_name("pftlab")
        runs = client.search_runs([experiment.experiment_id], "tags.run_kind = 'stage'") if experiment else []
        return runs[0] if runs else None

    with Tracker("prepare", {"seed": 0}) as t:
        t.log_metrics({"x": 1.0})
        deadline = time.time() + 90  # the writer's start-up (3 s, much more on a loaded machine), then a sample
        while time.time() < deadline and "system/cpu_utilization_percentage" not in getattr(
                getattr(stage_run(), "data", None), "metrics", {}):
            time.sleep(1)
    run = stage_run()
    assert "system/cpu_utilization_percentage" in run.data.metrics and run.data.metrics["x"] == 1.0


def test_a_row_another_writer_inserted_at_the_same_moment_is_found_on_the_next_try(monkeypatch):
    """Two queued experiments logged the same input dataset at once: MLflow's get-or-create is not atomic and one
    writer got a UNIQUE constraint error, which turned its stage's tracking off (its held-out results were lost)."""
    from pftlab.core import tracking

    monkeypatch.setattr(tracking.time, "sleep", lambda s: None)
    calls = []

    def collides(times):
        def call():
            calls.append(1)
            if len(calls) <= times:
                raise RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")
            return "logged"
        return call

    assert tracking._patiently(collides(1)) == "logged" and len(calls) == 2
    calls.clear()
    with pytest.raises(RuntimeError, match="UNIQUE"):  # a real duplicate is not retried for ever
        tracking._patiently(collides(10))
    assert len(calls) == 3
    calls.clear()
    with pytest.raises(ValueError):  # other errors are not retried
        tracking._patiently(lambda: calls.append(1) or (_ for _ in ()).throw(ValueError("bad metric")))
    assert len(calls) == 1


def test_a_result_with_an_interval_reads_rounded_beside_it():
    from pftlab.core.tracking import with_intervals

    numbers = {"eval/gold_reward": 0.0424571789, "eval/gold_reward_ci95": 0.0131234, "eval/kl_k1": 1.23456,
               "eval/win_rate_vs_sft": 0.5, "eval/win_rate_vs_sft_ci95": float("nan")}
    assert with_intervals(numbers) == {"eval/gold_reward: rounded with CI": "0.0425 ± 0.013"}  # no interval, no NaN: no tag
    assert with_intervals({"a": -30.3512, "a_ci95": 2.0}) == {"a: rounded with CI": "-30.4 ± 2"}
