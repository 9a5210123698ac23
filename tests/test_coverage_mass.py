"""Claim 6 (Song et al.): where tabular DPO puts the mass of responses no pair mentions (didactic/coverage_mass.py)."""
import math

import pytest
import torch

from pftlab.didactic import coverage_mass as cm


@pytest.fixture(autouse=True)
def one_thread():
    """Vectors of 100 numbers: extra threads only contend (18x slower on a loaded 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_one_sgd_step_by_hand():
    # 4 responses, 0 and 1 covered, 2 and 3 never in a pair; one pair (w=0, l=1); pi_ref = the start, so the
    # margin is 0 and d loss / d theta = -beta * sigmoid(0) * (e_0 - e_1) = (-0.25, 0.25, 0, 0) for beta 0.5.
    theta = torch.tensor([0.3, -0.2, 0.5, -1.0], requires_grad=True)
    log_ref = torch.log_softmax(theta.detach(), 0)
    opt = torch.optim.SGD([theta], lr=0.1)
    cm.dpo_step(theta, None, log_ref, torch.tensor([0]), torch.tensor([1]), 0.5, opt)
    assert theta.detach().tolist() == pytest.approx([0.325, -0.225, 0.5, -1.0], abs=1e-6)
    assert theta[:2].sum().item() == pytest.approx(0.1, abs=1e-6)       # sum of covered logits unchanged
    assert theta[2:].tolist() == pytest.approx([0.5, -1.0], abs=1e-6)   # uncovered logits unchanged
    # ... so the uncovered mass e^0.5 + e^-1 over the total can only fall: e^0.325 + e^-0.225 > e^0.3 + e^-0.2
    s_u = math.exp(0.5) + math.exp(-1.0)
    before = s_u / (s_u + math.exp(0.3) + math.exp(-0.2))
    after = s_u / (s_u + math.exp(0.325) + math.exp(-0.225))
    assert after < before
    assert cm.mass_stats(theta, 2)["uncovered_mass"] == pytest.approx(after, abs=1e-6)


def test_sgd_from_equal_covered_logits_never_raises_the_uncovered_mass():
    # The theorem's start: covered logits equal, uncovered logits anything; any pi_ref, beta, lr, batch.
    g = torch.Generator().manual_seed(0)
    for trial in range(5):
        theta = torch.cat([torch.full((6,), 0.7), torch.randn(4, generator=g)]).requires_grad_(True)
        log_ref = torch.randn(10, generator=g).log_softmax(0)
        start = cm.mass_stats(theta, 6)
        opt = torch.optim.SGD([theta], lr=0.5 + trial, momentum=0.9 if trial % 2 else 0.0)
        for _ in range(200):
            w, l = torch.randint(0, 6, (2, 8), generator=g)
            cm.dpo_step(theta, None, log_ref, w, l, 0.1 + trial, opt)
            now = cm.mass_stats(theta, 6)
            assert now["uncovered_mass"] <= start["uncovered_mass"] + 1e-6
        assert now["covered_logit_sum"] == pytest.approx(start["covered_logit_sum"], abs=1e-4)
        assert torch.allclose(now["uncovered_logits"], start["uncovered_logits"], atol=1e-6)


def test_tabular_dpo_from_uniform_moves_mass_off_the_uncovered_responses():
    for optimiser in cm.OPTIMISERS:
        run = cm.run_dpo(0, optimiser, "tabular", "uniform", steps=300)
        assert run["uncovered_mass"][0] == pytest.approx(0.5)
        assert max(run["uncovered_mass"]) <= 0.5 + 1e-6
        assert run["uncovered_mass"][-1] < 0.45
        assert run["uncovered_logit_change"] < 1e-3          # Adam: only rounding noise, rescaled
    sgd, adam = cm.run_dpo(0, "sgd", steps=300), cm.run_dpo(0, "adam", steps=300)
    assert abs(sgd["covered_logit_sum"][-1]) < 1e-4           # zero-sum steps
    assert abs(adam["covered_logit_sum"][-1]) > 0.1           # Adam's per-coordinate scaling breaks that...
    assert adam["covered_logit_sum"][-1] > 0                  # ... but here it drifts up, lowering the mass further


def test_a_start_that_prefers_the_worse_covered_responses_raises_the_uncovered_mass():
    for optimiser in cm.OPTIMISERS:
        run = cm.run_dpo(0, optimiser, "tabular", "anti", steps=300)
        assert run["first_order_rise"] > 0
        assert run["uncovered_mass"][-1] > run["uncovered_mass"][0] + 0.1
        assert run["uncovered_logit_change"] < 1e-3
    assert cm.run_dpo(0, "sgd", "tabular", "uniform", steps=0)["first_order_rise"] == 0.0


def test_shared_features_move_the_uncovered_logits():
    run = cm.run_dpo(0, "sgd", "features", "uniform", steps=300)
    assert run["uncovered_logit_change"] > 0.5
    assert run["uncovered_mass"][-1] > 0.5                    # seed 0; over 20 seeds it goes either way


def test_mass_table_shape():
    table = cm.mass_table(seeds=(0,), cases=[("sgd", "tabular", "uniform")], steps=20, log_every=10)
    assert list(table) == ["sgd/tabular/uniform"]
    assert set(table["sgd/tabular/uniform"]) == {"start", "end", "max", "covered_logit_sum_change", "curve"}
    with pytest.raises(ValueError):
        cm.run_dpo(0, "rmsprop")


def test_seeds_run_together_as_each_would_alone():
    """run_dpo_seeds batches seeds in one tensor; a seed's numbers match its run alone (same generator order)."""
    for optimiser, parametrisation, start in (("sgd", "tabular", "anti"), ("adam", "features", "uniform")):
        together = cm.run_dpo_seeds([0, 3], optimiser, parametrisation, start, steps=60, log_every=20)
        alone = cm.run_dpo(3, optimiser, parametrisation, start, steps=60, log_every=20)
        assert together[1]["uncovered_mass"] == pytest.approx(alone["uncovered_mass"], abs=1e-5)
        assert together[1]["first_order_rise"] == pytest.approx(alone["first_order_rise"])


def test_rlhf_from_a_start_keeps_the_uncovered_logits_where_the_reward_model_leaves_them():
    # tabular: the reward model never sees an uncovered response (r_hat = 0 there), so RLHF reaches
    # pi_ref e^{r_hat} / Z: from the anti start, whose pi_ref favours low-reward covered responses, Z < 1.
    runs = cm.run_rlhf_seeds([0, 1], "tabular", "anti", steps=300, rm_steps=200, log_every=100)
    assert all(r["uncovered_mass"][-1] > r["uncovered_mass"][0] + 0.1 for r in runs)
    uniform = cm.run_rlhf_seeds([0], "tabular", "uniform", steps=300, rm_steps=200)[0]
    assert uniform["uncovered_mass"][-1] < 0.5  # E_uniform[e^{r_hat}] >= 1 when r_hat has mean 0 (Jensen)


def test_claim6_runs_take_their_length_and_learning_rates_from_the_params(monkeypatch):
    """The 5,000-iteration setting (Song et al. 6.1.2) is params.yaml's coverage.claim6, passed to every run."""
    from pathlib import Path

    import yaml

    c = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())["coverage"]
    assert c["claim6"]["steps"] == 5000 and c["pairs"] == 10_000
    calls = []
    fake = lambda seeds, *args, **kw: calls.append((args, kw)) or [
        {"step": [0], "uncovered_mass": [0.5], "covered_logit_sum": [0.0]} for _ in seeds]
    monkeypatch.setattr(cm, "run_dpo_seeds", fake)
    monkeypatch.setattr(cm, "run_rlhf_seeds", fake)
    c = c | {"seeds": [0, 1], "claim6": c["claim6"] | {"steps": 7, "sgd_lr": 0.3, "adam_lr": 0.02}}
    table = cm.claim6_table(c, [("sgd", "tabular", "uniform"), ("adam", "tabular", "uniform")])
    dpo_sgd, dpo_adam, rlhf = calls[0], calls[2], calls[1]
    assert [call[1]["steps"] for call in calls] == [7, 7, 7]  # one RLHF run serves both optimisers
    assert dpo_sgd[1]["lr"] == 0.3 and dpo_adam[1]["lr"] == 0.02 and dpo_sgd[1]["pairs"] == c["pairs"]
    assert rlhf[1]["lr"] == c["lr"] and rlhf[1]["rm_steps"] == c["rm_steps"]
    assert table["sgd/tabular/uniform"]["rlhf_end"] == [0.5, 0.5]


def test_a_bad_claim6_param_is_named():
    from pathlib import Path

    import yaml

    from pftlab.core.errors import ParamError
    from pftlab.core.params import Params

    tree = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    tree["coverage"]["claim6"]["steps"] = 0
    with pytest.raises(ParamError, match="'coverage.claim6.steps' must be a positive integer"):
        Params(tree).check("coverage")
