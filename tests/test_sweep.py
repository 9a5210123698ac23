"""The hyperparameter sweep's summariser on synthetic `dvc exp show --json` output: which experiments
count, and the selection by validation reward (never by the evaluated prompts' reward)."""
import json

from pftlab.core.params import locked_stages
from pftlab.reporting import sweep

CURRENT = {"seed": 0, "algorithms": ["pref_ft", "dpo", "online_dpo"], "policy": {"lr": 1e-4},
           "algos": {"dpo": {"beta": 0.1}, "online_dpo": {"beta": 0.1}},
           "training_seeds": {"seeds": [1, 2]}, "variants": {"rewards": ["mode_length"], "algorithms": ["dpo"]}}


def experiment(name, params, evaluation: dict):
    algorithm = params["algorithms"][0]
    return {"rev": name, "name": name, "data": {"params": {"params.yaml": {"data": params}},
                                                "metrics": {f"metrics/eval/{algorithm}.json": {"data": evaluation}}}}


def one_algorithm(name, lr=None, beta=0.1, **other):
    params = {**CURRENT, "algorithms": [name], "training_seeds": {"seeds": []},
              "variants": {"rewards": ["mode_length"], "algorithms": []},
              "algos": {**CURRENT["algos"], name: {"beta": beta} | ({"lr": lr} if lr else {})}} | other
    return params


def test_selection_is_by_validation_reward_among_experiments_that_change_only_that_algorithm():
    shown = [{"rev": "workspace", "data": {}, "experiments": [{"revs": [
        experiment("a", one_algorithm("dpo", lr=3e-5), {"validation_gold_reward": -10.0, "gold_reward": -30.0}),
        experiment("b", one_algorithm("dpo", lr=1e-5, beta=0.3), {"validation_gold_reward": -8.0, "gold_reward": -40.0}),
        experiment("c", one_algorithm("dpo", lr=1e-3), {"validation_gold_reward": -50.0, "gold_reward": -5.0}),
        # another knob changed as well: not a point of this sweep, however good
        experiment("d", one_algorithm("dpo", lr=1e-5) | {"policy": {"lr": 5e-4}}, {"validation_gold_reward": 99.0}),
        # two algorithms at once: not a point either
        experiment("e", {**CURRENT, "algorithms": ["dpo", "online_dpo"]}, {"validation_gold_reward": 99.0}),
        experiment("f", one_algorithm("online_dpo", lr=3e-5), {"validation_gold_reward": -6.0}),
        # queued before dpo's selection went into params.yaml: online_dpo's stage never reads algos.dpo, so it counts
        experiment("g", one_algorithm("online_dpo", lr=1e-5) | {"algos": {"dpo": {"beta": 0.5}, "online_dpo": {"beta": 0.1, "lr": 1e-5}}},
                   {"validation_gold_reward": -7.0}),
    ]}]}]
    found = sweep.points(shown, CURRENT)
    assert sorted(r["experiment"] for r in found["dpo"]) == ["a", "b", "c"]
    assert sorted(r["experiment"] for r in found["online_dpo"]) == ["f", "g"]
    summary = sweep.summarise(found, CURRENT, {"dpo": {"validation_gold_reward": -9.0, "gold_reward": -44.0}})
    dpo = summary["algorithms"]["dpo"]
    assert dpo["selected"] == {"beta": 0.3, "lr": 1e-5}  # best on validation, although c is best on the eval prompts
    assert [r["experiment"] for r in dpo["rows"]] == ["b", "workspace", "a", "c"]  # the workspace competes too
    assert summary["algorithms"]["online_dpo"]["selected"] == {"beta": 0.1, "lr": 3e-5}
    assert summary["rule"] == sweep.RULE


def test_queue_commands_cover_the_grid_and_run_one_algorithm_alone():
    commands = sweep.queue_commands("dpo", {"lr": [1e-5, 3e-5], "beta": [0.1, 0.3]}, {"beta": 0.1})
    assert len(commands) == 4
    sets = [" ".join(c) for c in commands]
    assert all(s.startswith("dvc exp run evaluate@dpo --queue") for s in sets)  # that policy and its evaluation only
    assert all("-S algorithms=[dpo]" in s and "-S training_seeds.seeds=[]" in s for s in sets)
    assert sum("-S +algos.dpo.lr=1e-05" in s and "-S algos.dpo.beta=0.3" in s for s in sets) == 1  # a new key: +


def test_a_new_summary_keeps_the_tables_of_algorithms_it_no_longer_finds(tmp_path):
    import json

    row = lambda name, lr: {"experiment": name, "setting": {"lr": lr}, "validation_gold_reward": -1.0}
    old = {"rule": sweep.RULE, "algorithms": {"dpo": {"current": {}, "selected": {"lr": 3e-5}, "rows": []},
                                              "hypo": {"current": {}, "selected": {}, "rows": [row("a", 1e-4), row("workspace", 1e-4)]}}}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    new = {"rule": sweep.RULE, "algorithms": {"hypo": {"current": {}, "selected": {"lam": 0.1}, "rows": []}}}
    merged = sweep.keep_earlier(new, tmp_path / "summary.json")
    assert merged["algorithms"]["hypo"]["selected"] == {"lam": 0.1}  # the new table's selection
    assert merged["algorithms"]["hypo"]["rows"] == [row("a", 1e-4) | {"earlier": True}]  # listed, marked; not the old workspace
    assert merged["algorithms"]["dpo"]["selected"] == {"lr": 3e-5} and "kept" in merged["algorithms"]["dpo"]
    assert sweep.keep_earlier(new, tmp_path / "absent.json") is new
    # ...and a later summary keeps them still: kept rows are not dropped by the next summarise
    (tmp_path / "summary.json").write_text(json.dumps(merged))
    again = sweep.keep_earlier({"rule": sweep.RULE, "algorithms": {"hypo": {"current": {}, "selected": {"lam": 0.1}, "rows": []}}},
                               tmp_path / "summary.json")
    assert again["algorithms"]["hypo"]["rows"] == [row("a", 1e-4) | {"earlier": True}]


def test_a_running_experiment_is_not_a_point():
    """DVC shows a queued or running experiment with the workspace's metrics: counting it would score the
    workspace's setting under the experiment's."""
    running = experiment("r", one_algorithm("dpo", lr=1e-3), {"validation_gold_reward": 5.0})
    running["data"]["rev"] = "workspace"
    shown = [{"rev": "workspace", "data": {}, "experiments": [
        {"revs": [running], "executor": {"state": "running"}, "name": "r"},
        {"revs": [experiment("q", one_algorithm("dpo", lr=1e-4), {"validation_gold_reward": 5.0})],
         "executor": {"state": "queued"}, "name": "q"},
        {"revs": [experiment("done", one_algorithm("dpo", lr=3e-5), {"validation_gold_reward": -1.0})],
         "executor": {"state": "success"}, "name": "done"}]}]
    assert [r["experiment"] for r in sweep.points(shown, CURRENT)["dpo"]] == ["done"]


def test_the_workspace_competes_only_with_the_setting_it_was_trained_with(tmp_path):
    import yaml

    lock = {"stages": {"policy@bon": {"params": {"params.yaml": {"algos.bon": {"top": 1}}}}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    stages = locked_stages(tmp_path / "dvc.lock")
    trained = lambda algos: sweep.trained_as_now("bon", {"algos": algos}, stages)
    assert trained({"bon": {"top": 1}})
    assert not trained({"bon": {"top": 1, "lr": 3e-4}})  # a selection copied in, not yet reproduced
    assert not sweep.trained_as_now("rwr", {"algos": {"rwr": {"top": 1}}}, stages)
    assert locked_stages(tmp_path / "absent.lock") == {}
    # DVC writes YAML 1.2: `3e-05` is a number (YAML 1.1 would read a string, and the workspace would never compete)
    (tmp_path / "dvc.lock").write_text("stages:\n  policy@bon:\n    params:\n      params.yaml:\n        algos.bon:\n"
                                      "          top: 1\n          lr: 3e-05\n")
    assert sweep.trained_as_now("bon", {"algos": {"bon": {"top": 1, "lr": 3e-5}}}, locked_stages(tmp_path / "dvc.lock"))


def test_ladder_steps_and_where_a_selection_sits_in_its_grid():
    assert [sweep.ladder_step(3e-4, True), sweep.ladder_step(3e-4, False)] == [1e-3, 1e-4]
    assert [sweep.ladder_step(0.1, False), sweep.ladder_step(0.3, True), sweep.ladder_step(0.05, True)] == [0.03, 1.0, 0.1]
    row = lambda setting, earlier=False: {"experiment": "x", "setting": setting, "earlier": earlier}
    entry = {"selected": {"beta": 0.3, "lr": 3e-4}, "rows": [
        row({"beta": 0.3, "lr": 3e-4}), row({"beta": 0.3, "lr": 3e-5}), row({"beta": 0.3}),  # lr: 3e-5, 1e-4 (policy.lr), 3e-4
        row({"beta": 0.1, "lr": 3e-4}), row({"beta": 1.0, "lr": 3e-4}, earlier=True),  # earlier rows do not count
        row({"beta": 3.0, "lr": 1e-4})]}  # another lr: not in beta's grid at the selection
    status = sweep.grid_status(entry, {"lr": 1e-4})
    assert status["lr"] == {"tried": [3e-5, 1e-4, 3e-4], "selected": 3e-4, "status": "high edge"}
    assert status["beta"]["tried"] == [0.1, 0.3] and status["beta"]["status"] == "high edge"
    assert sweep.extension_points(status) == [("lr", 1e-3), ("beta", 1.0)]
    interior = sweep.grid_status({"selected": {"lr": 1e-4}, "rows": [row({"lr": 3e-5}), row({"lr": 3e-4}), row({})]}, {"lr": 1e-4})
    assert interior["lr"]["status"] == "interior" and sweep.extension_points(interior) == []
    never = sweep.grid_status({"selected": {"beta": 0.1, "lr": 3e-4}, "rows": [row({"beta": 0.1, "lr": 3e-4})]}, {"lr": 1e-4})
    assert never["beta"]["status"] == "not swept"
    assert {("beta", 0.03), ("beta", 0.3)} <= set(sweep.extension_points(never))
    bound = sweep.grid_status({"selected": {"lr": 3e-3}, "rows": [row({"lr": 1e-3}), row({"lr": 3e-3})]}, {"lr": 1e-4})
    assert bound["lr"]["status"] == "high edge (at bound)" and sweep.extension_points(bound) == []


def test_queue_with_training_seeds_runs_the_seeds_stage_too():
    (command,) = sweep.queue_commands("hypo", {"lr": [3e-5]}, {"lr": 3e-3}, seeds=(1, 2))
    assert command[:5] == ["dvc", "exp", "run", "evaluate@hypo", "seeds@hypo"]
    assert "training_seeds.seeds=[1,2]" in command


def commit(rev, params, metrics):
    return {"rev": rev, "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                                 "metrics": {k: {"data": v} for k, v in metrics.items()}}}


def test_committed_runs_are_points_where_no_experiment_ran_their_setting():
    """A commit's policies ran at its algos.<a>: the setting params.yaml held before a selection was copied in counts,
    unless an experiment (or the workspace) ran it; a commit under other shared params does not count at all."""
    before = {**CURRENT, "algos": {"dpo": {"beta": 0.1, "lr": 3e-4}, "online_dpo": {"beta": 0.1}}}
    shown = [{"rev": "workspace", "data": {}, "experiments": [{"revs": [
        experiment("a", one_algorithm("dpo", lr=3e-5), {"validation_gold_reward": -10.0})]}]},
        commit("1234567abc", before, {"metrics/eval/dpo.json": {"validation_gold_reward": -12.0, "gold_reward": -1.0},
                                      "metrics/eval/online_dpo.json": {"validation_gold_reward": -3.0},
                                      "metrics/training_seeds/dpo/s1/eval.json": {"gold_reward": -2.0, "kl_k1": 1.0}}),
        commit("89abcdef01", before | {"seed": 5}, {"metrics/eval/dpo.json": {"validation_gold_reward": 50.0}}),
        commit("fedcba9876", {**CURRENT, "algos": {"dpo": {"beta": 0.1, "lr": 3e-5}}},
               {"metrics/eval/dpo.json": {"validation_gold_reward": 40.0}})]
    found = sweep.points(shown, CURRENT)
    assert [r["experiment"] for r in found["dpo"]] == ["a", "commit 1234567", "commit fedcba9"]
    assert found["dpo"][1]["seeds"] == {"1": {"gold_reward": -2.0, "kl_k1": 1.0}}  # its training seeds come along
    summary = sweep.summarise(found, CURRENT, {"online_dpo": {"validation_gold_reward": -3.5}})
    dpo = summary["algorithms"]["dpo"]
    # fedcba9 ran lr 3e-5, which experiment a ran too: a's numbers count, not the commit's
    assert [r["experiment"] for r in dpo["rows"]] == ["a", "commit 1234567"]
    assert dpo["selected"] == {"beta": 0.1, "lr": 3e-5}
    # the workspace beats a commit at its own setting
    assert [r["experiment"] for r in summary["algorithms"]["online_dpo"]["rows"]] == ["workspace"]
    assert summary["context"] == sweep.context_of(CURRENT) != sweep.context_of(before | {"seed": 5})
    assert sweep.context_of(before) == sweep.context_of(CURRENT)  # algos.* are not shared params


def test_an_earlier_summary_under_the_same_params_still_counts(tmp_path):
    """Experiments gone from `dvc exp show` (another clone, `dvc exp gc`) keep counting while the shared params are the
    same; the earlier workspace row too, as "earlier params.yaml"; a better earlier row is selected."""
    import json

    row = lambda name, lr, v: {"experiment": name, "setting": {"lr": lr}, "validation_gold_reward": v}
    context = sweep.context_of(CURRENT)
    old = {"rule": sweep.RULE, "context": context, "algorithms": {"dpo": {"current": {"lr": 1e-4}, "selected": {"lr": 3e-4}, "rows": [
        row("x", 3e-4, -1.0), row("workspace", 1e-4, -2.0), row("y", 1e-5, -9.0) | {"earlier": True}]}}}
    (tmp_path / "summary.json").write_text(json.dumps(old))
    new = {"rule": sweep.RULE, "context": context, "algorithms": {"dpo": {"current": {"lr": 3e-4}, "selected": {"lr": 1e-3},
                                                                         "rows": [row("z", 1e-3, -1.5)]}}}
    merged = sweep.keep_earlier(new, tmp_path / "summary.json")["algorithms"]["dpo"]
    assert [(r["experiment"], r.get("earlier", False)) for r in merged["rows"]] == [
        ("x", False), ("z", False), ("earlier params.yaml", False), ("y", True)]
    assert merged["selected"] == {"lr": 3e-4}
    status = sweep.grid_status(merged, {"lr": 1e-4})
    assert status["lr"]["status"] == "interior" and status["lr"]["tried"] == [1e-4, 3e-4, 1e-3]
    # under other shared params every earlier row is marked and the earlier workspace row is dropped
    (tmp_path / "summary.json").write_text(json.dumps(old | {"context": "other"}))
    other = sweep.keep_earlier({**new, "algorithms": {"dpo": dict(new["algorithms"]["dpo"], rows=[row("z", 1e-3, -1.5)])}},
                               tmp_path / "summary.json")["algorithms"]["dpo"]
    assert [(r["experiment"], r.get("earlier", False)) for r in other["rows"]] == [("z", False), ("x", True), ("y", True)]
    assert other["selected"] == {"lr": 1e-3}


def test_seed_evaluations_reads_each_seeds_evaluation_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in (1, 12):
        folder = tmp_path / "metrics" / "training_seeds" / "dpo" / f"s{seed}"
        folder.mkdir(parents=True)
        (folder / "eval.json").write_text(json.dumps({"gold_reward": -seed}))
        (folder / "policy.json").write_text(json.dumps({"seconds": 1.0}))  # the policy stage's: not an evaluation
    assert sweep.seed_evaluations("dpo") == {1: {"gold_reward": -1}, 12: {"gold_reward": -12}}
    assert sweep.seed_evaluations("ipo") == {}


def test_an_earlier_commits_stage_lists_do_not_change_its_context():
    """Commits from before every policy had training seeds list `training_seeds.algorithms`: a stage list, not a
    knob, so their sweep rows still count."""
    tree = {"seed": 0, "policy": {"lr": 1e-4}, "training_seeds": {"seeds": [1]}, "algorithms": ["dpo"]}
    earlier = {**tree, "training_seeds": {"seeds": [1, 2], "algorithms": ["dpo"]}, "algorithms": ["dpo", "ipo"]}
    assert sweep.context_of(earlier) == sweep.context_of(tree)
    assert sweep.context_of({**tree, "policy": {"lr": 3e-4}}) != sweep.context_of(tree)
