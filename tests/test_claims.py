"""The LLM tasks' claims and the seed collection, on synthetic metric values."""
import json

import pytest

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
    # claim 4, two readings: taxonomy (online_dpo, rloo have both; pref_ft, dpo, hypo lack one) and literal
    assert verdict("4") == [claims.REPRODUCED, claims.REPRODUCED]
    assert [c["reading"] for c in out["4"]] == ["taxonomy", "literal"]
    assert "(online_dpo)" in out["4"][0]["comparison"] and "(dpo)" in out["4"][0]["comparison"]  # -4 vs -12
    assert "(online_dpo)" in out["4"][1]["comparison"] and "(rloo)" in out["4"][1]["comparison"]  # -4 vs -6
    assert verdict("8") == [claims.REPRODUCED, claims.NOT_REPRODUCED]  # lower KL, but 2 tokens worse than DPO
    assert abs(out["8"][1]["mean"] + 2.0) < 1e-9
    # the same numbers under a reward whose peak the SFT policy already covers: claims 1 and 3 do not apply
    likely = claims.llm_claims(gold, kl, "mode_length", over="prompts")
    assert "1" not in likely and "3" not in likely and "4" in likely
    # offline wins: claim 4 not reproduced
    worse = claims.llm_claims(_gold(dpo=-3, online_dpo=-8, pref_ft=-9), {}, "min_length", over="prompts")
    assert [c["verdict"] for c in worse["4"]] == [claims.NOT_REPRODUCED, claims.NOT_REPRODUCED]
    assert [c["verdict"] for c in worse["1"]] == [claims.NOT_REPRODUCED]


def test_claim_4_picks_each_best_on_validation_prompts_and_has_a_verdict_per_reading():
    """The held-out scores would pick rloo and pref_ft; the validation prompts pick ppo and dpo, and those are compared.
    With both readings' checks, the claim's verdict is the taxonomy reading's; each reading has its own."""
    gold = _gold(pref_ft=-10, dpo=-11, rloo=-2, ppo=-3, online_dpo=-9)
    validation = {"pref_ft": -12.0, "dpo": -9.0, "rloo": -4.0, "ppo": -1.0, "online_dpo": -20.0}
    taxonomy, literal = claims.llm_claims(gold, {}, "min_length", over="prompts", validation=validation)["4"]
    assert "(ppo)" in taxonomy["comparison"] and "(dpo)" in taxonomy["comparison"]
    assert "validation prompts" in taxonomy["comparison"] and abs(taxonomy["mean"] - 8.0) < 1e-9
    assert "(online_dpo)" in literal["comparison"] and "(ppo)" in literal["comparison"] and literal["mean"] < 0
    out = claims.all_claims(llm_parts=[("llm", {"4": [taxonomy, literal]})])["4"]
    assert out["verdict"] == claims.REPRODUCED
    assert out["verdicts_by_reading"] == {"taxonomy": claims.REPRODUCED, "literal": claims.NOT_REPRODUCED}
    assert out["reading"].startswith("two readings")
    assert claims.on_policy_with_negative_gradient("rloo") and not claims.on_policy_with_negative_gradient("hypo")
    assert not claims.on_policy_with_negative_gradient("bon") and not claims.on_policy_with_negative_gradient("dpo")


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
    assert (main.pairs, main.reward_model, main.policy("dpo"), main.metrics("evaluate", "dpo")) == (
        "data/pairs/pairs.jsonl", "models/reward_model", "models/policy/dpo", "metrics/eval/dpo.json")
    assert (mode.pairs, mode.reward_model, mode.policy("dpo"), mode.metrics("evaluate", "dpo"), mode.curve("policy", "dpo")) == (
        "data/variants/mode_length/pairs/pairs.jsonl", "models/variants/mode_length/reward_model",
        "models/variants/mode_length/policy/dpo", "metrics/variants/mode_length/eval/dpo.json",
        "metrics/variants/mode_length/curves/policy_dpo.csv")
    assert mode.policy("sft") == main.policy("sft") == "models/sft"  # one SFT model for every task
    assert (main.curve("reward_model"), mode.curve("reward_model")) == (  # each an output of its stage
        "metrics/curves/reward_model.csv", "metrics/variants/mode_length/curves/reward_model.csv")
    assert (main.stage("policy", "dpo"), mode.stage("policy", "dpo"), mode.stage("evaluate", "sft"), mode.stage("pairs")) == (
        "policy@dpo", "policy_variant@mode_length-dpo", "evaluate_variant_sft@mode_length", "pairs_variant@mode_length")
    assert json.dumps(main.metrics("pairs")) == '"metrics/pairs.json"'


def test_frontier_and_kl_at_matched_reward_by_hand():
    points = [(1.0, -20.0), (2.0, -25.0), (4.0, -10.0), (8.0, -12.0), (10.0, -5.0)]
    assert claims.frontier(points) == [(1.0, -20.0), (4.0, -10.0), (10.0, -5.0)]  # (2, -25) and (8, -12) are beaten
    assert claims.kl_at_reward(points, -15.0) == 2.5  # halfway from (1, -20) to (4, -10)
    assert claims.kl_at_reward(points, -7.5) == 7.0
    assert claims.kl_at_reward(points, -30.0) == 1.0  # below the frontier's first reward: its least KL
    assert claims.kl_at_reward(points, -4.0) is None  # never reached


def test_claim_8_at_matched_settings_from_the_sweep():
    """Cells the sweep ran for both at one (beta, lr), HyPO's other knobs at its selection; a row without lr ran at
    policy.lr. HyPO lower KL by a factor e in each cell, and better reward: reproduced on that reading."""
    import math

    row = lambda name, setting, gold, kl: {"experiment": name, "setting": setting, "gold_reward": gold, "kl_k1": kl}
    summary = {"algorithms": {
        "dpo": {"selected": {"beta": 0.3, "lr": 3e-5}, "rows": [
            row("d1", {"beta": 0.3, "lr": 3e-5}, -25.0, 0.56 * math.e), row("d2", {"beta": 0.1, "lr": 1e-4}, -44.0, 20 * math.e),
            row("d3", {"beta": 0.1, "lr": 1e-5}, -28.0, 0.04)]},
        "hypo": {"selected": {"beta": 0.1, "lam": 0.01}, "rows": [
            row("h1", {"beta": 0.1, "lam": 0.01}, -14.0, 20.0), row("h2", {"beta": 0.3, "lam": 0.01, "lr": 3e-5}, -24.0, 0.56),
            row("h3", {"beta": 0.3, "lam": 0.1, "lr": 3e-5}, -99.0, 99.0)]}}}  # another lam: not matched
    cells = claims.matched_cells(summary, default_lr=1e-4)
    assert [(c[0], c[1]["experiment"], c[2]["experiment"]) for c in cells] == [
        ({"beta": 0.3, "lr": 3e-5}, "d1", "h2"), ({"beta": 0.1, "lr": 1e-4}, "d2", "h1")]
    kl, gold = claims.matched_settings_claims(cells)["8"]
    assert kl["mean"] == pytest.approx(1.0) and kl["reading"] == "matched settings" and kl["n"] == 2
    assert gold["mean"] == pytest.approx(15.5)
    assert claims.matched_settings_claims(cells[:1]) == {}  # one setting: nothing to test over
    # HyPO's selection moved to lam 0.1 after the matched runs (one cell there): the lam with the most cells counts
    hypo_moved = dict(summary["algorithms"]["hypo"], selected={"beta": 0.1, "lam": 0.1})
    moved = {"algorithms": {"dpo": summary["algorithms"]["dpo"], "hypo": hypo_moved}}
    assert [c[2]["experiment"] for c in claims.matched_cells(moved, default_lr=1e-4)] == ["h2", "h1"]
    earlier = {"algorithms": {"dpo": summary["algorithms"]["dpo"], "hypo": {"selected": {"lam": 0.01}, "rows": [
        dict(r, earlier=True) for r in summary["algorithms"]["hypo"]["rows"]]}}}
    assert claims.matched_cells(earlier, default_lr=1e-4) == []  # earlier rows never count
    # training seeds at a cell: each cell's difference is the mean over the seeds both ran (not seed 0 alone);
    # a seed only one of them ran is not compared
    cells[0][1]["seeds"] = {"1": {"gold_reward": -15.0, "kl_k1": 0.56 * math.e ** 3}, "2": {"gold_reward": 0.0, "kl_k1": 1.0}}
    cells[0][2]["seeds"] = {"1": {"gold_reward": -24.0, "kl_k1": 0.56}}
    kl, gold = claims.matched_settings_claims(cells)["8"]
    assert kl["mean"] == pytest.approx((2.0 + 1.0) / 2) and gold["mean"] == pytest.approx(((1.0 - 9.0) / 2 + 30.0) / 2)
    assert "1-2 training seeds each" in kl["over"]
    assert claims.matched_cells({"algorithms": {"dpo": summary["algorithms"]["dpo"]}}, 1e-4) == []


def test_docs_setups_states_every_claim_reading_as_the_report_does():
    from pathlib import Path

    setups = " ".join((Path(__file__).resolve().parents[1] / "docs" / "SETUPS.md").read_text().split())
    for cid, text in claims.CLAIM_READING.items():
        assert f"{cid}. {' '.join(text.split())}" in setups, cid


def test_over_seeds_claim_4_is_chosen_on_the_validation_prompts_of_the_seed_that_scored_them(tmp_path):
    """Training seeds' evaluations skip the validation prompts: the choice over seeds uses this run's seed's."""
    from pftlab.core.paths import Task

    names = ["sft", "dpo", "ppo", "online_dpo"]
    held_out = {"sft": -30.0, "dpo": -5.0, "ppo": -2.0, "online_dpo": -3.0}
    validation = {"sft": -30.0, "dpo": -20.0, "ppo": -9.0, "online_dpo": -1.0}  # picks online_dpo, not ppo
    evals = {"min_length": {}}
    for n in names:
        for seed in (0, 1, 2):
            task = Task() if seed == 0 else Task(seed=seed)
            rows = [{"prompt_index": i, "gold": held_out[n] + 0.1 * i + 0.01 * seed, "kl_k1": 1.0} for i in range(4)]
            (tmp_path / task.eval_samples(n)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / task.eval_samples(n)).write_text("".join(json.dumps(r) + "\n" for r in rows))
            values = {"gold_reward": held_out[n] + 0.15 + 0.01 * seed, "kl_k1": 1.0}
            if seed == 0:
                values["validation_gold_reward"] = validation[n]
                evals["min_length"][n] = values
            (tmp_path / task.metrics("evaluate", n)).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / task.metrics("evaluate", n)).write_text(json.dumps(values))
    runs = seeds.pipeline_seed_runs(names[1:], {"seeds": [1, 2]}, "min_length", tmp_path)
    parts, _ = claims.llm_claim_parts({"min_length": (Task(), names)}, evals, 0, runs, tmp_path)
    over_seeds = [c for _, cl in parts for c in cl.get("4", []) if c["over"].startswith("training seeds")]
    taxonomy = next(c for c in over_seeds if c["reading"] == "taxonomy")
    assert "(online_dpo)" in taxonomy["comparison"] and "validation prompts" in taxonomy["comparison"]


def _bandit_summary(reuse_end: dict, t1_curve: dict, speeds: dict) -> dict:
    """A bandit.json with the reuse study (per method: T -> (fresh samples, final reward)), T = 1's reward per
    fresh samples, and on-policy speeds; 4 seeds with a small fixed spread."""
    spread = [-0.01, 0.0, 0.01, 0.0]
    values = lambda m: [m + d for d in spread]
    runs = {}
    for method, by_t in reuse_end.items():
        for t, (samples, reward) in by_t.items():
            curve = [{"step": 0, "samples": 0, "reward": values(0.0)}]
            if t == 1:
                curve += [{"step": s // 10, "samples": s, "reward": values(r)} for s, r in t1_curve[method].items()]
            curve.append({"step": 100, "samples": samples, "reward": values(reward)})
            runs[f"misaligned/{method}/reuse_{t}"] = {"final_reward": values(reward), "mean_reward": values(reward),
                                                      "samples": [samples] * 4, "curve": curve}
    for method, speed in speeds.items():
        for reward in ("aligned", "misaligned"):
            for sampling in ("offline", "on_policy"):
                runs[f"{reward}/{method}/{sampling}"] = {"final_reward": values(speed), "mean_reward": values(speed)}
    return {"runs": runs}


def test_claim_2_at_equal_compute_interpolates_t1_and_never_decides():
    # a collection of 10 samples; T = 1 logs steps 0, 5, 10 (samples 0, 50, 100), T = 5 ends at step 10 with 20.
    t1 = {"collection_samples": 10, "curve": [{"step": s, "samples": 10 * s, "reward": [r, r + 0.1]}
                                             for s, r in ((0, 0.0), (5, 0.5), (10, 0.6))]}
    t5 = {"collection_samples": 10, "final_reward": [0.4, 0.5], "curve": [{"step": 10, "samples": 20, "reward": [0.4, 0.5]}]}
    assert claims.compute_used(t5["curve"][-1], 10, 1.0) == 120  # 20 fresh samples + 10 steps x 10
    assert claims.reward_at_compute(t1, 120, 1.0) == pytest.approx([0.52, 0.62])  # T = 1 spends 20 a step: step 6, 0.5 + 0.2 x 0.1
    assert claims.reward_at_compute(t1, 201, 1.0) is None  # beyond T = 1's run
    t1["final_reward"] = [0.6, 0.7]
    out = claims.reuse_claims({"misaligned/ppo/reuse_1": t1, "misaligned/ppo/reuse_5": t5}, [1.0])
    line = next(c for c in out if c["reading"] == "reuse saves compute (ours)")
    assert line["decides"] is False and line["mean"] == pytest.approx(-0.12)


def test_bandit_claim_2_reads_reward_at_equal_fresh_samples_and_at_equal_steps_per_method():
    # T=1 draws 10 samples per step (1000 in all); T=2 draws 500, T=5 200. At 500 samples T=1 had 0.4, at 200 0.2.
    t1 = {m: {200: 0.2, 500: 0.4} for m in ("best_of_n", "ppo")}
    reuse = {"best_of_n": {1: (1000, 0.8), 2: (500, 0.7), 5: (200, 0.3)},   # reuse saves samples; T=5 < best smaller T (0.8)
             "ppo": {1: (1000, 0.6), 2: (500, 0.3), 5: (200, 0.7)}}         # T=2 loses at its budget, T=5 best
    out = claims.all_claims(bandit=_bandit_summary(reuse, t1, {"best_of_n": 0.5, "rwr": 0.4, "ppo": 0.9}))["2"]
    checks = out["checks"]
    saves = {c["quantity"]: c for c in checks if c["reading"] == "reuse saves fresh samples" and c.get("decides", True)}
    assert len(saves) == 2 and all("mean over T" in c["comparison"] for c in saves.values())
    bon_saves = next(c for c in checks if "best-of-N" in c["quantity"] and "mean over T" in c["comparison"])
    assert bon_saves["mean"] == pytest.approx(((0.7 - 0.4) + (0.3 - 0.2)) / 2)
    per_t = [c for c in checks if c.get("decides") is False and "budget" in c["comparison"]]
    assert len(per_t) == 4 and any("T=2 - T=1 at T=2's budget (500 samples)" in c["comparison"] for c in per_t)
    hurts = [c for c in checks if c["reading"] == "too much reuse hurts" and c.get("decides", True)]
    assert [c["comparison"] for c in hurts] == ["best T=1 - largest T=5 (too much reuse hurts)"] * 2
    assert hurts[0]["mean"] == pytest.approx(0.5) and hurts[1]["mean"] == pytest.approx(-0.1)  # PPO: the largest is best
    ours = next(c for c in checks if "not the paper's" in c["comparison"])
    assert ours["decides"] is False and ours["mean"] == pytest.approx(0.5 - (-0.1))
    # both parts decide: PPO's largest T being best makes the claim not reproduced
    assert out["verdicts_by_reading"]["too much reuse hurts"] == claims.NOT_REPRODUCED
    assert out["verdict"] == claims.NOT_REPRODUCED


def test_bandit_claim_5_pooled_and_per_method():
    speeds = {"best_of_n": 0.5, "rwr": 0.3, "reinforce": 0.6, "ppo": 0.7, "dpo": 0.4, "ipo": 0.8}  # DPO < best-of-N
    out = claims.all_claims(bandit=_bandit_summary({}, {}, speeds))["5"]
    pooled = [c for c in out["checks"] if c["reading"] == "pooled"]
    per_method = [c for c in out["checks"] if c["reading"] == "per method"]
    assert len(pooled) == 1 and pooled[0]["mean"] == pytest.approx(0.625 - 0.4)
    assert len(per_method) == 8 and any(c["comparison"].startswith("dpo - best_of_n") and c["mean"] < 0 for c in per_method)
    assert out["verdict"] == claims.REPRODUCED  # the pooled reading decides
    assert out["verdicts_by_reading"] == {"pooled": claims.REPRODUCED, "per method": claims.NOT_REPRODUCED}
