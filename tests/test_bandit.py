"""Tajwar et al.'s didactic bandit against the authors' definitions (docs/SETUPS.md), and the seeds of a
cell run as one batched program against the plain one-seed run."""
import math

import pytest
import torch

from pftlab.core.params import load_params
from pftlab.didactic import bandit

HP = {"init_gain": 0.01, "fit_steps": 100, "fit_lr": 0.01, "beta": 0.05, "min_reward_gap": 0.0, "clip": 0.2,
      "kl_coef": 0.01, "entropy_coef": 0.0, "reinforce_clip": None, "rwr_temperature": 0.1, "rwr_max_weight": 100.0}
SMALL = {"train_contexts": 4, "eval_contexts": 20, "collections": 3, "steps_per_collection": 4, "samples_per_context": 6,
         "lr": 1e-2}


def test_reference_and_rewards():
    ref = bandit.reference_distribution()
    assert ref.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert 10 <= int(ref[5:95].argmax()) + 5 <= 20  # interior mode near bin 15
    assert (ref * bandit.peaked_reward(20)).sum() > 5 * (ref * bandit.peaked_reward(70)).sum()  # aligned vs misaligned


def test_init_is_xavier_uniform_with_the_authors_gain_and_zero_bias():
    params = bandit.init_policy([0, 1], gain=0.01)
    tensors = bandit.unpack(params)
    for weight, bias, (fan_in, fan_out) in zip(tensors[0:8:2], tensors[1:8:2], zip(bandit.WIDTHS[:-1], bandit.WIDTHS[1:])):
        bound = 0.01 * math.sqrt(6 / (fan_in + fan_out))
        assert weight.shape == (2, fan_in, fan_out) and weight.abs().max() <= bound
        assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)  # uniform(-b, b): std b / sqrt(3)
        assert not bias.any()
    assert not torch.equal(tensors[0][0], tensors[0][1])  # each seed its own draw
    assert (tensors[-2] == 1).all() and not tensors[-1].any()  # LayerNorm gamma, beta
    logp = bandit.policy_logp(params, torch.rand(2, 5, bandit.CONTEXT_DIM))
    entropy = -(logp.exp() * logp).sum(-1)
    assert entropy.min().item() > math.log(100) - 1e-3  # the authors' start: almost uniform


def test_default_params_are_the_authors_scripts():
    b = load_params("params.yaml").config("bandit")
    assert (b.init_gain, b.fit_lr, b.fit_steps, b.samples_per_context) == (0.01, 0.01, 100, 10)
    assert (b.offline.collections, b.offline.steps_per_collection, b.offline.lr, b.offline.train_contexts) == (1, 200, 0.01, 5)
    assert (b.on_policy.collections, b.on_policy.steps_per_collection, b.on_policy.lr) == (100, 15, 0.001)
    assert b.on_policy.train_contexts == 10 and b.ipo.offline.lr == 0.003 and b.ipo.on_policy.lr == 0.01
    assert len(b.seeds) >= 20


def test_pre_fit_reaches_pi_ref():
    log_ref = bandit.log_reference()
    train, _, weights = bandit.start([0], 10, 5, HP)
    logp = bandit.policy_logp(weights, train)
    kl = (logp.exp() * (logp - log_ref)).sum(-1).mean().item()
    assert kl < 5e-3


def test_best_of_n_loss_averages_over_contexts_hand_worked():
    logp_all = torch.log_softmax(torch.randn(1, 2, bandit.ACTIONS), -1)
    actions = torch.tensor([[[3, 70, 5], [60, 1, 2]]])
    reward = bandit.peaked_reward(70)
    batch = {"actions": actions, "rewards": reward[actions], "old_logp": logp_all.gather(-1, actions)}
    loss = bandit.seed_losses("best_of_n", HP, logp_all, batch, bandit.log_reference())
    expected = -(logp_all[0, 0, 70] + logp_all[0, 1, 60]) / 2  # the best of each context, / C (not / (C * N))
    assert loss.shape == (1,) and loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_first_collection_is_drawn_from_pi_ref_and_later_ones_from_the_policy(monkeypatch):
    sources = []
    collect = bandit.collect

    def spy(logp, n, generators, reward):
        sources.append(logp.clone())
        return collect(logp, n, generators, reward)

    monkeypatch.setattr(bandit, "collect", spy)
    bandit.run("best_of_n", bandit.peaked_reward(70), HP, [0], **SMALL)
    log_ref = bandit.log_reference()
    assert len(sources) == SMALL["collections"]
    assert torch.equal(sources[0], log_ref.expand_as(sources[0]))
    assert not torch.allclose(sources[1], log_ref.expand_as(sources[1]), atol=1e-3)  # the trained policy


def test_final_reward_is_the_mean_of_the_last_five_evaluations(monkeypatch):
    evaluated = []
    exact = bandit.exact_metrics

    def spy(params, contexts, log_ref, reward):
        out = exact(params, contexts, log_ref, reward)
        evaluated.append(out["reward"].clone())
        return out

    monkeypatch.setattr(bandit, "exact_metrics", spy)
    out = bandit.run("dpo", bandit.peaked_reward(70), HP, [0, 1], **SMALL | {"collections": 5})
    last_five = torch.stack(evaluated[-5:]).mean(0)
    assert out["final_reward"] == pytest.approx(last_five.tolist(), abs=1e-7)
    assert out["final_reward"] != pytest.approx([c for c in out["curve"][-1]["reward"]], abs=1e-9)  # not the last point


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("method", ["best_of_n", "rwr", "reinforce", "ppo", "dpo", "ipo"])
def test_seeds_batched_give_the_one_seed_numbers(method, one_thread):
    """Same seed, same numbers (one thread: several split a matmul by its shape, so 3 seeds and 1 could
    round differently)."""
    seeds = [3, 4, 5]
    batched = bandit.run(method, bandit.peaked_reward(70), HP, seeds, **SMALL)
    for i, seed in enumerate(seeds):
        alone = bandit.run(method, bandit.peaked_reward(70), HP, [seed], **SMALL)
        assert batched["final_reward"][i] == alone["final_reward"][0]
        assert batched["curve"][-1]["kl"][i] == alone["curve"][-1]["kl"][0]


def test_on_policy_best_of_n_climbs_the_misaligned_peak():
    out = bandit.run("best_of_n", bandit.peaked_reward(70), HP, [0, 1], train_contexts=10, eval_contexts=20,
                     collections=30, steps_per_collection=15, samples_per_context=10, lr=1e-2)
    start = out["curve"][0]["reward"]
    assert min(out["final_reward"]) > max(start) + 0.2
