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
    assert set(table["sgd/tabular/uniform"]) == {"start", "end", "max", "covered_logit_sum_change"}
    with pytest.raises(ValueError):
        cm.run_dpo(0, "rmsprop")
