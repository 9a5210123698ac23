"""The one-table comparison of runs (reporting/compare.py) on `dvc exp show --json` as DVC 3 writes it."""
from pftlab.reporting import compare


def entry(params, evals, rev="abc1234def", name=None, state=None):
    metrics = {f"metrics/eval/{a}.json": {"data": m} for a, m in evals.items()}
    metrics["metrics/pairs.json"] = {"data": {"pairs": 10}}  # not an evaluation: never a row
    out = {"rev": rev, "name": name, "data": {"rev": rev, "params": {"params.yaml": {"data": params}}, "metrics": metrics}}
    if state:
        out["executor"] = {"state": state}
    return out


def test_rows_show_only_what_differs_from_the_workspace():
    base = {"seed": 0, "algorithms": ["dpo", "hypo"], "algos": {"dpo": {"beta": 0.3}, "hypo": {"lam": 0.03}}}
    dpo = {"gold_reward": -25.5333, "gold_reward_ci95": 1.66, "kl_k1": 0.5631, "win_rate_vs_sft": 0.5383}
    hypo = {"gold_reward": -20.0, "gold_reward_ci95": 2.0, "kl_k1": 0.1, "win_rate_vs_sft": 0.6}
    workspace = entry(base, {"dpo": dpo, "hypo": hypo}, rev="workspace")
    low = {**base, "algorithms": ["dpo"], "algos": {**base["algos"], "dpo": {"beta": 0.05}}}
    same = {**base, "algorithms": ["hypo"]}
    commit = entry(base, {"dpo": dpo, "hypo": hypo})
    commit["experiments"] = [
        {"revs": [entry(low, {"dpo": {**dpo, "gold_reward": -30.0, "kl_k1": 2.0}, "hypo": hypo}, rev="e1", name="beta-low")]},
        {"revs": [entry(same, {"dpo": dpo, "hypo": hypo}, rev="e2", name="rerun")]},
        {"executor": {"state": "failed"}, "revs": [entry(low, {"dpo": dpo}, rev="e3", name="broken")]},
    ]
    runs = compare.runs([workspace, commit])
    assert [r[0] for r in runs] == ["workspace", "commit abc1234", "beta-low", "rerun"]  # the failed one has no numbers
    rows = compare.table(runs)
    assert rows[0] == ("workspace", "algos.dpo.beta=0.3", "dpo", "-25.53 [-27.19, -23.87]", "0.563", "0.54")
    assert rows[1][2:] == ("hypo", "-20.00 [-22.00, -18.00]", "0.100", "0.60")
    by_run = {r[0]: r for r in rows if r[0]}
    assert by_run["beta-low"] == ("beta-low", "algos.dpo.beta=0.05", "dpo", "-30.00 [-31.66, -28.34]", "2.000", "0.54")
    assert by_run["rerun"][2] == "(same numbers as workspace)" and by_run["commit abc1234"][2].startswith("(same")
    text = compare.render(rows)
    assert "algorithms=" not in text and "gold reward [95% CI over prompts]" in text.splitlines()[0]
    assert compare.render(rows, markdown=True).splitlines()[1] == "|---|---|---|---|---|---|"


def test_wall_clock_fields_do_not_make_a_run_differ_and_a_null_reward_is_no_row():
    params = {"seed": 0, "policy": {"lr": 1e-4}}
    m = {"gold_reward": 1.0, "gold_reward_ci95": 0.5, "kl_k1": 0.1, "win_rate_vs_sft": 0.5, "seconds": 10.0}
    workspace = entry(params, {"dpo": m, "ipo": {**m, "gold_reward": None}}, rev="workspace")
    commit = entry(params, {"dpo": {**m, "seconds": 12.5}})
    runs = compare.runs([workspace, commit])
    assert set(runs[0][2]) == {"dpo"}  # ipo's gold reward was not a number (written as null)
    rows = compare.table(runs)
    assert rows[-1][0] == "commit abc1234" and rows[-1][2] == "(same numbers as workspace)"
    assert rows[0][1] == "-"  # no param differs
