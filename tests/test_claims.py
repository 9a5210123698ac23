"""The LLM tasks' claims and the seed collection, on synthetic metric values."""
import json

from pftlab.core.paths import Task
from pftlab.reporting import claims, seeds


def _gold(**means):
    """Per-unit values around each mean: a small, fixed spread so the intervals are narrow."""
    spread = [-0.3, 0.1, 0.2, -0.1, 0.1]
    return {name: [m + d for d in spread] for name, m in means.items()}


def test_llm_claims_follow_the_metrics_and_skip_halves_the_reward_does_not_test():
    gold = _gold(sft=-30, pref_ft=-20, dpo=-12, online_dpo=-4, rloo=-6, hypo=-14)
    kl = _gold(sft=0, pref_ft=0.3, dpo=9, online_dpo=3, rloo=4, hypo=2)
    out = claims.llm_claims(gold, kl, "min_length", over="prompts")
    verdict = lambda cid: [c["verdict"] for c in out[cid]]
    assert verdict("1") == [claims.REPRODUCED]  # online_dpo - dpo = +8
    assert verdict("3") == [claims.REPRODUCED]  # dpo - pref_ft = +8
    assert verdict("4") == [claims.REPRODUCED] and "online_dpo" in out["4"][0]["comparison"] and "rloo" in out["4"][0]["comparison"]
    assert verdict("8") == [claims.REPRODUCED, claims.NOT_REPRODUCED]  # lower KL, but 2 tokens worse than DPO
    assert abs(out["8"][1]["mean"] + 2.0) < 1e-9
    # the same numbers under a reward whose peak the SFT policy already covers: claims 1 and 3 do not apply
    likely = claims.llm_claims(gold, kl, "mode_length", over="prompts")
    assert "1" not in likely and "3" not in likely and "4" in likely
    # offline wins: claim 4 not reproduced
    worse = claims.llm_claims(_gold(dpo=-3, online_dpo=-8, pref_ft=-9), {}, "min_length", over="prompts")
    assert [c["verdict"] for c in worse["4"]] == [claims.NOT_REPRODUCED]
    assert [c["verdict"] for c in worse["1"]] == [claims.NOT_REPRODUCED]


def test_on_policy_gain_compared_across_gold_rewards():
    unlikely = _gold(dpo=-20, online_dpo=-5)       # on-policy gains 15 where the peak is unlikely
    likely = _gold(dpo=-3, online_dpo=-2)          # and 1 where it is likely
    out = claims.llm_peak_claims({"min_length": unlikely, "mode_length": likely}, over="prompts")
    assert [c["verdict"] for c in out["1"]] == [claims.REPRODUCED] and abs(out["1"][0]["mean"] - 14) < 1e-9
    reversed_ = claims.llm_peak_claims({"min_length": likely, "mode_length": unlikely}, over="prompts")
    assert [c["verdict"] for c in reversed_["1"]] == [claims.NOT_REPRODUCED]
    assert claims.llm_peak_claims({"min_length": unlikely}, over="prompts") == {}  # nothing to compare with


def _exp_show(records):
    """`dvc exp show --json` as DVC 3 writes it: the workspace, then a commit with its experiments."""
    def entry(rev, name, params, metrics):
        return {"rev": rev, "name": name, "error": None,
                "data": {"rev": rev, "params": {"params.yaml": {"data": params}},
                         "metrics": {path: {"data": m} for path, m in metrics.items()}}}
    workspace, baseline, *exps = [entry(*r) for r in records]
    workspace["rev"] = "workspace"
    return [workspace | {"experiments": None},
            baseline | {"experiments": [{"revs": [e], "name": e["name"], "executor": None} for e in exps]}]


def _metrics(shift):
    return {"metrics/pairs.json": {"gold_reward": "min_length"},
            "metrics/eval/dpo.json": {"gold_reward": -10 + shift, "kl_k1": 5.0, "win_rate_vs_sft": 0.5, "prompts": 3},
            "metrics/variants/mode_length/eval/dpo.json": {"gold_reward": -2 + shift, "kl_k1": 1.0},
            "metrics/didactic/bandit.json": {"seconds": 1.0}}


def test_seed_collection_keeps_runs_that_differ_only_in_the_seed(tmp_path):
    params = lambda seed, lr=0.1: {"seed": seed, "policy": {"lr": lr}, "algorithms": ["dpo"]}
    show = _exp_show([("workspace", None, params(0), _metrics(0)),
                      ("abc123", "main", params(0), _metrics(0)),        # the workspace's own seed: skipped
                      ("e1", "exp-seed1", params(1), _metrics(1)),
                      ("e2", "exp-lr", params(2, lr=0.5), _metrics(2)),  # another knob moved: not a seed run
                      ("e3", "exp-seed3", params(3), _metrics(3))])
    runs = seeds.collect(show, params(0))
    assert [(r["seed"], r["experiment"]) for r in runs] == [(1, "exp-seed1"), (3, "exp-seed3")]
    assert runs[0]["tasks"] == {"min_length": {"dpo": {"gold_reward": -9, "kl_k1": 5.0, "win_rate_vs_sft": 0.5}},
                                "mode_length": {"dpo": {"gold_reward": -1, "kl_k1": 1.0}}}
    seeds.write_seed_runs(runs, tmp_path)
    (tmp_path / "seed_9.json").write_text("{}")  # stale from an earlier collection...
    seeds.write_seed_runs(runs, tmp_path)        # ...is removed
    assert sorted(p.name for p in tmp_path.glob("seed_*.json")) == ["seed_1.json", "seed_3.json"]
    assert seeds.load_seed_runs(tmp_path) == runs
    (tmp_path / "seed_1.json").write_text("[1, 2]")
    try:
        seeds.load_seed_runs(tmp_path)
        raise AssertionError("a malformed seed file must be refused")
    except seeds.DataError as e:
        assert "seed_1.json" in str(e)


def test_task_paths_put_variants_beside_the_main_task():
    main, mode = Task(), Task("mode_length")
    assert (main.pairs, main.reward_model, main.policy("dpo"), main.metrics("eval", "dpo")) == (
        "data/pairs/pairs.jsonl", "models/reward_model", "models/policy/dpo", "metrics/eval/dpo.json")
    assert (mode.pairs, mode.reward_model, mode.policy("dpo"), mode.metrics("eval", "dpo"), mode.curve("policy", "dpo")) == (
        "data/variants/mode_length/pairs/pairs.jsonl", "models/variants/mode_length/reward_model",
        "models/variants/mode_length/policy/dpo", "metrics/variants/mode_length/eval/dpo.json",
        "metrics/variants/mode_length/curves/policy_dpo.csv")
    assert mode.policy("sft") == main.policy("sft") == "models/sft"  # one SFT model for every task
    assert (main.stage("policy", "dpo"), mode.stage("policy", "dpo"), mode.stage("evaluate", "sft"), mode.stage("pairs")) == (
        "policy@dpo", "policy_variant@mode_length-dpo", "evaluate_variant_sft@mode_length", "pairs_variant@mode_length")
    assert json.dumps(main.metrics("pairs")) == '"metrics/pairs.json"'
