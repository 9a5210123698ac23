"""Tajwar et al.'s didactic bandit against the authors' definitions (docs/SETUPS.md), and the seeds of a
cell run as one batched program against the plain one-seed run."""
import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from pftlab.algorithms.hyperparameters import RwrHp
from pftlab.core.params import load_params
from pftlab.didactic import bandit
from pftlab.didactic.config import BanditAlgos, BanditPairHp, BanditPpoHp, BanditReinforceHp

# the authors' choices, written out here so that a params edit cannot move what these tests check
SETUP = SimpleNamespace(init_gain=0.01, fit_steps=100, fit_lr=0.01, logp="clamped", reference="per_seed")
ALGOS = BanditAlgos(rwr=RwrHp(temperature=0.1, max_weight=100.0),
                    reinforce=BanditReinforceHp(entropy_coef=0.05, entropy_estimate="sampled", baseline="running"),
                    ppo=BanditPpoHp(clip=0.2, kl_coef=0.01), dpo=BanditPairHp(beta=0.05, min_reward_gap=0.0),
                    ipo=BanditPairHp(beta=0.05, min_reward_gap=0.0))
OURS_BEFORE = {"entropy_coef": 0.0, "entropy_estimate": "exact", "baseline": "collection", "logp": "log_softmax",
               "reference": "fixed"}


def cell(method: str, variant: dict = None) -> tuple:
    """(start knobs, the method's typed hyperparameters) with `variant`'s keys set wherever they belong."""
    variant = variant or {}
    setup = SimpleNamespace(**vars(SETUP) | {k: v for k, v in variant.items() if hasattr(SETUP, k)})
    hp = getattr(ALGOS, method, None)
    if hp is not None:
        hp = dataclasses.replace(hp, **{k: v for k, v in variant.items() if k in {f.name for f in dataclasses.fields(hp)}})
    return setup, hp


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


@pytest.mark.parametrize("variant", [{}, OURS_BEFORE], ids=["authors", "ours_before"])
def test_pre_fit_reaches_pi_ref(variant):
    setup, _ = cell("best_of_n", variant)
    log_ref = bandit.log_references([0], setup.reference)
    train, _, weights = bandit.start([0], 10, 5, setup)
    logp = bandit.policy_logp(weights, train)
    kl = (logp.exp() * (logp - log_ref)).sum(-1).mean().item()
    assert kl < 5e-3


def test_best_of_n_loss_averages_over_contexts_hand_worked():
    logp_all = torch.log_softmax(torch.randn(1, 2, bandit.ACTIONS), -1)
    actions = torch.tensor([[[3, 70, 5], [60, 1, 2]]])
    reward = bandit.peaked_reward(70)
    batch = {"actions": actions, "rewards": reward[actions], "old_logp": logp_all.gather(-1, actions)}
    loss = bandit.seed_losses("best_of_n", None, logp_all, batch, bandit.log_reference())
    expected = -(logp_all[0, 0, 70] + logp_all[0, 1, 60]) / 2  # the best of each context, / C (not / (C * N))
    assert loss.shape == (1,) and loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_first_collection_is_drawn_from_pi_ref_and_later_ones_from_the_policy(monkeypatch):
    sources = []
    collect = bandit.collect

    def spy(logp, n, generators, reward):
        sources.append(logp.clone())
        return collect(logp, n, generators, reward)

    monkeypatch.setattr(bandit, "collect", spy)
    bandit.run("best_of_n", bandit.peaked_reward(70), *cell("best_of_n"), [0], **SMALL)
    log_ref = bandit.log_references([0], SETUP.reference)
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
    out = bandit.run("dpo", bandit.peaked_reward(70), *cell("dpo"), [0, 1], **SMALL | {"collections": 5})
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
@pytest.mark.parametrize("variant", [{}, OURS_BEFORE], ids=["authors", "ours_before"])
def test_seeds_batched_give_the_one_seed_numbers(method, variant, one_thread):
    """Same seed, same numbers (one thread: several split a matmul by its shape, so 3 seeds and 1 could
    round differently)."""
    seeds = [3, 4, 5]
    batched = bandit.run(method, bandit.peaked_reward(70), *cell(method, variant), seeds, **SMALL)
    for i, seed in enumerate(seeds):
        alone = bandit.run(method, bandit.peaked_reward(70), *cell(method, variant), [seed], **SMALL)
        assert batched["final_reward"][i] == alone["final_reward"][0]
        assert batched["curve"][-1]["kl"][i] == alone["curve"][-1]["kl"][0]


def test_on_policy_best_of_n_climbs_the_misaligned_peak():
    out = bandit.run("best_of_n", bandit.peaked_reward(70), *cell("best_of_n"), [0, 1], train_contexts=10, eval_contexts=20,
                     collections=30, steps_per_collection=15, samples_per_context=10, lr=1e-2)
    start = out["curve"][0]["reward"]
    assert min(out["final_reward"]) > max(start) + 0.2


# --- the authors' REINFORCE, pi_ref per seed, streams per purpose, the reuse budget ------------------------
def test_clamped_logp_is_the_authors_categorical_with_no_gradient_outside_the_clamp():
    logits = torch.tensor([[0.0, 2.0, -40.0, 1.0]], requires_grad=True)  # p(action 2) ~ 1e-18 < eps
    theirs = torch.distributions.Categorical(probs=torch.softmax(logits, -1)).log_prob(torch.arange(4)[:, None]).T
    ours = bandit.clamped_logp(logits)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert bandit.EPS == pytest.approx(1.1920929e-07) and ours[0, 2].item() == pytest.approx(math.log(bandit.EPS), rel=1e-6)
    (grad_outside,) = torch.autograd.grad(ours[0, 2], logits, retain_graph=True)
    assert not grad_outside.any()  # clamped: the action gets no push at all
    (grad_inside,) = torch.autograd.grad(ours[0, 1], logits)
    (expected,) = torch.autograd.grad(torch.log_softmax(logits, -1)[0, 1], logits)
    assert torch.allclose(grad_inside, expected, atol=1e-6)  # inside the clamp: log_softmax's gradient


def test_running_baseline_hand_worked_over_a_reused_collection_and_a_new_one():
    """bandit_learner.py:966-978: each sample joins the running sums, then is z-scored by them (population variance)."""
    state = bandit.new_baseline_state(1)
    z1, state = bandit.running_zscores(torch.tensor([[[1.0, 3.0]]]), state)  # (1, 1), (4, 10): mean 2, var 1
    z2, state = bandit.running_zscores(torch.tensor([[[1.0, 3.0]]]), state)  # the same samples again (a reused step)
    z3, state = bandit.running_zscores(torch.tensor([[[5.0]]]), state)  # a new collection
    assert z1.flatten().tolist() == pytest.approx([0.0, 1.0])
    assert z2.flatten().tolist() == pytest.approx([(1 - 5 / 3) / math.sqrt(8 / 9), 1.0])  # count 3: sum 5, squares 11
    assert z3.flatten().tolist() == pytest.approx([(5 - 13 / 5) / math.sqrt((45 - 169 / 5) / 5)])  # count 5
    assert state["count"] == 5


def test_running_baseline_is_the_authors_loop_on_random_rewards():
    rewards = [torch.rand(2, 3, 4) for _ in range(3)]
    state, ours = bandit.new_baseline_state(2), []
    for r in rewards:
        z, state = bandit.running_zscores(r, state)
        ours.append(z)
    for s in range(2):
        total = squares = count = 0.0
        for r, z in zip(rewards, ours):
            for reward, zscore in zip(r[s].flatten().tolist(), z[s].flatten().tolist()):  # their loop, verbatim
                total += reward
                squares += reward * reward
                count += 1
                variance = (squares - total * total / count) / count
                assert zscore == pytest.approx((reward - total / count) / (math.sqrt(max(variance, 0.0)) + 1e-12), abs=1e-5)


def test_reinforce_entropy_bonus_is_the_authors_sign_and_estimate():
    """Theirs: entropy_term = -mean log pi(sampled), loss -= beta * entropy_term (bandit_learner.py:981-996)."""
    logp_all = torch.log_softmax(torch.randn(1, 2, bandit.ACTIONS), -1)
    actions = torch.tensor([[[3, 70, 5], [60, 1, 2]]])
    batch = {"actions": actions, "rewards": torch.zeros(1, 2, 3), "old_logp": logp_all.gather(-1, actions),
             "advantages": torch.zeros(1, 2, 3)}
    loss = bandit.seed_losses("reinforce", cell("reinforce")[1], logp_all, batch, bandit.log_reference())
    assert loss.item() == pytest.approx(0.05 * logp_all.gather(-1, actions).mean().item(), rel=1e-6)
    exact = bandit.seed_losses("reinforce", cell("reinforce", {"entropy_estimate": "exact"})[1], logp_all, batch, bandit.log_reference())
    assert exact.item() == pytest.approx(0.05 * (logp_all.exp() * logp_all).sum(-1).mean().item(), rel=1e-6)  # -0.05 H


def test_exact_entropy_bonus_keeps_more_entropy_and_the_sampled_one_has_no_mean_gradient():
    """The exact bonus raises the entropy; the authors' sampled estimate -mean log pi(a) pushes each sampled action
    down, which in expectation over a ~ pi is no push at all (sum_a pi(a) grad log pi(a) = grad sum_a pi(a) = 0)."""
    runs = {coef: bandit.run("reinforce", bandit.peaked_reward(20), *cell("reinforce", {"entropy_estimate": "exact", "entropy_coef": coef}),
                             [0, 1], **SMALL)
            for coef in (0.0, 0.5)}
    assert min(runs[0.5]["final_entropy"]) > max(runs[0.0]["final_entropy"])
    logits = torch.randn(bandit.ACTIONS, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    (mean_push,) = torch.autograd.grad((logp.exp().detach() * -logp).sum(), logits)
    assert mean_push.abs().max().item() < 1e-6


def test_each_seed_draws_its_own_pi_ref_and_the_same_seed_the_same():
    per_seed = bandit.log_references([0, 1, 0], "per_seed")
    assert per_seed.shape == (3, 1, bandit.ACTIONS)
    assert not torch.equal(per_seed[0], per_seed[1]) and torch.equal(per_seed[0], per_seed[2])
    fixed = bandit.log_references([0, 1], "fixed")
    assert torch.equal(fixed[0, 0], bandit.log_reference()) and torch.equal(fixed[0], fixed[1])  # our earlier pi_ref
    ref = bandit.seed_reference(7)
    assert ref.sum().item() == pytest.approx(1.0, abs=1e-6) and 10 <= int(ref[5:95].argmax()) + 5 <= 20


def test_no_two_seeds_or_purposes_share_a_random_stream(monkeypatch):
    purposes = set()
    stream_seed = bandit.stream_seed

    def spy(seed, purpose):
        purposes.add(purpose)
        return stream_seed(seed, purpose)

    monkeypatch.setattr(bandit, "stream_seed", spy)
    bandit.run("best_of_n", bandit.peaked_reward(70), *cell("best_of_n"), [0], **SMALL | {"collections": 1, "steps_per_collection": 1})
    assert {"reference", "train_contexts", "eval_contexts", "samples", "init_layer0"} <= purposes
    values = [stream_seed(seed, purpose) for seed in range(20) for purpose in purposes]
    assert len(set(values)) == len(values)


def _reuse_cfg(collection_size):
    cfg = load_params("params.yaml").config("bandit")
    return dataclasses.replace(cfg, reuse=dataclasses.replace(cfg.reuse, values=[1, 2, 5], steps=10, train_contexts=3,
                                                              collection_size=collection_size))


@pytest.mark.parametrize("t", [1, 2, 5])
def test_reuse_study_counts_fresh_samples_as_collections_times_contexts_times_n(t, monkeypatch):
    drawn = []
    collect = bandit.collect

    def spy(logp, n, generators, reward):
        batch = collect(logp, n, generators, reward)
        drawn.append(batch["actions"][0].numel())
        return batch

    monkeypatch.setattr(bandit, "collect", spy)
    cfg = _reuse_cfg("fixed")
    schedule = bandit.cell_schedule(cfg, "ppo", f"reuse_{t}") | {"eval_contexts": 5}
    assert (schedule["collections"], schedule["steps_per_collection"], schedule["samples_per_context"]) == (10 // t, t, 10)
    out = bandit.run("ppo", bandit.peaked_reward(70), *cell("ppo"), [0, 1], **schedule)
    assert sum(drawn) == out["samples"][0] == (10 // t) * 3 * 10  # collections x contexts x N
    at = {point["step"]: point["samples"] for point in out["curve"]}
    assert set(bandit.reuse_log_steps(cfg.reuse)) <= set(at)  # every T's budget is on every curve
    assert at[10 // t] == -(-(10 // t) // t) * 3 * 10  # samples drawn before step k: ceil(k / T) collections
    grows = bandit.cell_schedule(_reuse_cfg("grows_with_T"), "ppo", f"reuse_{t}")
    assert grows["collections"] * grows["samples_per_context"] == 10 * 10  # the earlier ablation: samples fixed


def test_reuse_study_logs_t1_either_side_of_every_ts_compute_hand_worked():
    from pftlab.reporting.claims import compute_used

    # 10 steps, 3 contexts x N = 10: a collection is 30 samples. T = 2 draws 5 collections (150 samples) and passes
    # 30 samples on each of 10 steps: at a sample cost of 1, 150 + 300 = 450. T = 1 spends 30 + 30 per step: 7.5 steps.
    assert bandit.equal_compute_step(2, 10, 1.0) == 7.5
    cfg = _reuse_cfg("fixed")
    cfg = dataclasses.replace(cfg, reuse=dataclasses.replace(cfg.reuse, sample_costs=[1.0, 0.333]))
    assert {7, 8} <= set(bandit.reuse_log_steps(cfg.reuse))
    runs = {t: bandit.run("ppo", bandit.peaked_reward(70), *cell("ppo"), [0], **bandit.cell_schedule(cfg, "ppo", f"reuse_{t}")
                          | {"eval_contexts": 5}) for t in (1, 2, 5)}
    for cost in cfg.reuse.sample_costs:
        for t in (2, 5):
            spent = compute_used(runs[t]["curve"][-1], 30, cost)
            assert spent == cost * (10 // t) * 30 + 10 * 30
            t1 = [compute_used(point, 30, cost) for point in runs[1]["curve"]]
            assert any(c <= spent <= c_next and c_next - c <= 60 for c, c_next in zip(t1, t1[1:]))  # one step apart


def test_a_bad_bandit_choice_is_refused_naming_its_key():
    from pftlab.core.errors import ParamError
    from pftlab.core.params import Params

    for key, value in (("logp", "softmax"), ("reference", "shared"), ("algos.reinforce.baseline", "mean"),
                       ("algos.reinforce.entropy_estimate", 1), ("algos.rwr.temperature", 0)):
        tree = yaml.safe_load(Path("params.yaml").read_text())
        *parents, leaf = key.split(".")
        node = tree["bandit"]
        for part in parents:
            node = node[part]
        node[leaf] = value
        with pytest.raises(ParamError, match=f"bandit.{key}"):
            Params(tree).check("bandit")


def test_each_bandit_method_reads_its_own_typed_hyperparameters_and_no_learning_rate_of_its_own():
    from pftlab.core.errors import ParamError
    from pftlab.core.params import Params

    cfg = load_params("params.yaml").config("bandit").check_methods("params.yaml")
    assert type(cfg.hyperparameters("rwr", "offline")) is RwrHp  # the LLM task's RWR knobs, one rule for both
    assert cfg.hyperparameters("best_of_n", "offline") is None
    assert cfg.hyperparameters("ipo", "offline").min_reward_gap == 0.2  # the authors' offline IPO script's filter
    assert cfg.hyperparameters("ipo", "on_policy").min_reward_gap == cfg.algos.ipo.min_reward_gap
    tree = yaml.safe_load(Path("params.yaml").read_text())
    tree["bandit"]["algos"]["dpo"]["lr"] = 0.1
    with pytest.raises(ParamError, match=r"'bandit.algos.dpo.lr' is not read"):
        Params(tree, "p.yaml").config("bandit").check_methods("p.yaml")
    del tree["bandit"]["algos"]["dpo"]
    with pytest.raises(ParamError, match=r"runs dpo but 'bandit.algos.dpo' is not given"):
        Params(tree, "p.yaml").config("bandit").check_methods("p.yaml")
