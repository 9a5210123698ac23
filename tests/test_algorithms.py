"""The algorithm table against what the objectives do, and the objectives on small bandits with a
known optimum (pi* proportional to pi_ref * exp(r / beta))."""
import dataclasses
import itertools

import pytest
import torch

import pftlab.algorithms.table as algorithms
from pftlab.algorithms import losses
from pftlab.algorithms.hyperparameters import HYPERPARAMETERS, HypoHp, PairHp
from pftlab.algorithms.table import ALGORITHMS
from pftlab.lm.model import pack, target_mask, token_logprobs
from pftlab.training.batches import HybridBatch, PairBatch, SampleBatch

PAD = 0


# --- hand-worked values ----------------------------------------------------------------------------
def test_ipo_loss_hand_worked():
    loss, stats = losses.ipo_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.25)
    # h = (-1 + 2) - (-3 + 2) = 2 ; target 1 / (2 * 0.25) = 2 -> loss 0
    assert loss.item() == pytest.approx(0.0)
    loss, _ = losses.ipo_loss(torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert loss.item() == pytest.approx(1.0)  # (0 - 1)^2


def test_ipo_both_forms_hand_worked():
    """Summed log-ratios (Azar et al.'s eq. 17) and per-token ones (TRL's IPO, the IPO authors' form), beta 0.25:
    chosen of 2 tokens, logp -4 vs ref -6; rejected of 3 tokens, logp -9 vs ref -6."""
    args = torch.tensor([-4.0]), torch.tensor([-9.0]), torch.tensor([-6.0]), torch.tensor([-6.0])
    summed, _ = losses.ipo_loss(*args, beta=0.25)
    assert summed.item() == pytest.approx((2.0 - (-3.0) - 2.0) ** 2)  # h = 5, target 2 -> 9
    per_token, stats = losses.ipo_loss(*args, beta=0.25, lengths=(torch.tensor([2]), torch.tensor([3])))
    assert per_token.item() == pytest.approx(0.0)  # h = 2 / 2 - (-3) / 3 = 2 = the target
    assert stats["implicit_reward_chosen"] == pytest.approx(0.25) and stats["margin"] == pytest.approx(0.5)
    assert losses.ipo_pair_losses(*args, beta=0.25, lengths=(torch.tensor([2]), torch.tensor([3]))).item() == 0.0


def test_ipo_objective_follows_length_normalise():
    """The objective reads `length_normalise`: the two forms differ on pairs of unequal length."""
    from tests.test_micro_batches import case

    values = {}
    for name in ("ipo", "ipo_summed", "online_ipo", "online_ipo_summed"):
        _, index, loss_fn, _ = case(name, 8)
        values[name] = loss_fn(index)[0].item()
    assert values["ipo"] != pytest.approx(values["ipo_summed"])
    assert values["online_ipo"] != pytest.approx(values["online_ipo_summed"])


def test_max_likelihood_weights_hand_worked():
    rewards = torch.tensor([[0.0, 3.0, 1.0], [5.0, -1.0, 2.0]])
    assert losses.best_of_n_weights(rewards, 1).tolist() == [[0, 1, 0], [1, 0, 0]]
    assert losses.best_of_n_weights(rewards, 2).tolist() == [[0, 1, 1], [1, 0, 1]]
    w = losses.rwr_weights(torch.tensor([0.0, 1.0, 10.0]), temperature=0.5, max_weight=5.0)
    assert torch.allclose(w, torch.tensor([1.0, 5.0, 5.0]))  # e^2 = 7.39 clipped to 5
    loss, _ = losses.weighted_nll(torch.tensor([-2.0, -4.0]), torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx((2.0 + 2.0) / 2)
    with pytest.raises(ValueError):
        losses.weighted_nll(torch.tensor([-1.0]), torch.tensor([-1.0]))


def test_hypo_kl_term_hand_worked():
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    kl = torch.tensor([[3.0, 1.0]])
    term = losses.hypo_kl_term(logp, kl)
    # coefficients sg(k_i - k_other) = [2, -2]; mean(2 * -1 + -2 * -2) over 2 samples = 1
    assert term.item() == pytest.approx(1.0)
    term.backward()
    assert logp.grad.tolist() == [[1.0, -1.0]]  # gradient descent lowers the high-KL sample's likelihood


# --- the table against the objectives' real gradients ----------------------------------------------
def _seqs(n):
    return pack([[3, 4]] * n, [[5, 6, 7]] * n, PAD)


def _token_logp(n, g):
    seqs = _seqs(n)
    return -torch.rand(n, seqs.input_ids.shape[1] - 1, generator=g) * target_mask(seqs)


def _batch(source, k=4, prompts=3):
    g = torch.Generator().manual_seed(0)
    if source in ("offline", "hybrid"):
        pairs = PairBatch(_seqs(prompts), _seqs(prompts), -10 * torch.rand(prompts, generator=g),
                          -10 * torch.rand(prompts, generator=g), torch.randn(prompts, generator=g),
                          torch.randn(prompts, generator=g))
        if source == "offline":
            return pairs
        samples = SampleBatch(_seqs(prompts * 2), torch.full((prompts * 2,), float("nan")),
                              _token_logp(prompts * 2, g), _token_logp(prompts * 2, g), 2)
        return HybridBatch(pairs, samples)
    n = prompts * k
    return SampleBatch(_seqs(n), torch.randn(n, generator=g), _token_logp(n, g), _token_logp(n, g), k)


HP = {"beta": 0.1, "temperature": 1.0, "max_weight": 10.0, "top": 1, "kl_coef": 0.05, "baseline_decay": 0.9,
      "min_reward_gap": 0.0, "offline_fraction": 0.0, "length_normalise": True, "lam": 0.5, "length_penalty": 0.0, "kl_estimator": "k1",
      "adaptive_kl": True, "kl_target": 1.0,
      "kl_horizon": 100, "clip": 0.2, "value_clip": 0.2, "vf_coef": 0.1, "gamma": 1.0, "gae_lambda": 0.95}


def typed_hp(name: str, hp: dict):
    """Algorithm `name`'s hyperparameters, typed as a run gets them, from a mapping of every algorithm's keys."""
    cls = HYPERPARAMETERS[name]
    return cls(**{f.name: hp[f.name] for f in dataclasses.fields(cls) if f.name in hp})


def sequence_weights(name, monkeypatch):
    """-d loss / d log pi(y) for every sequence the objective scores: its weight in the gradient."""
    leaves = []

    def fake_token_logprobs(policy, seqs, with_entropy=False):
        g = torch.Generator().manual_seed(len(leaves))
        leaf = (-torch.rand(len(seqs), seqs.input_ids.shape[1] - 1, generator=g)).requires_grad_(True)
        leaves.append(leaf)
        return (leaf, torch.ones_like(leaf)) if with_entropy else leaf

    def fake_logprobs_and_values(policy, value_head, seqs):
        logp, entropy = fake_token_logprobs(policy, seqs, with_entropy=True)
        return logp, entropy, torch.zeros_like(logp, requires_grad=True)

    monkeypatch.setattr(algorithms, "token_logprobs", fake_token_logprobs)
    monkeypatch.setattr(algorithms, "token_logprobs_and_values", fake_logprobs_and_values)
    algo = ALGORITHMS[name]
    k = 2 if "online" in name else 4
    hp = typed_hp(name, HP | {"samples_per_prompt": k})
    batch, state = _batch(algo.source, k=k), {"value_head": None}
    if algo.prepare is not None:
        batch, _ = algo.prepare(None, batch, hp, state)
        leaves.clear()  # what prepare scored is data, not part of the loss
    if algo.begin_step is not None:
        algo.begin_step(batch, hp, state)
    loss, _ = algo.objective(None, batch, hp, state)
    loss.backward()
    assert all(leaf.grad is not None for leaf in leaves), "an objective scored sequences it does not train on"
    return torch.cat([-leaf.grad[:, -1] for leaf in leaves])  # the response's last token: weight of the sequence


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_negative_weights_exactly_where_the_table_says(name, monkeypatch):
    weights = sequence_weights(name, monkeypatch)
    assert (weights != 0).any()
    assert bool((weights < -1e-9).any()) == ALGORITHMS[name].negative_gradient


def test_hypo_with_lambda_zero_is_dpo():
    batch = _batch("hybrid")

    # exact equality of the objectives' values and gradients on a real tiny policy
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0,
                                       embd_pdrop=0, attn_pdrop=0, pad_token_id=PAD, bos_token_id=1, eos_token_id=1))
    results = []
    for objective, hp in ((ALGORITHMS["dpo"].objective, PairHp(beta=0.1)),
                          (ALGORITHMS["hypo"].objective, HypoHp(beta=0.1, lam=0.0, length_penalty=0.0, samples_per_prompt=2))):
        model.zero_grad()
        loss, _ = objective(model, batch if objective is ALGORITHMS["hypo"].objective else batch.pairs, hp, {})
        loss.backward()
        results.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


# --- bandits with a known optimum -------------------------------------------------------------------
R = torch.tensor([1.0, -0.5, 0.3, 0.8, -1.0, 0.0])
REF = torch.log_softmax(torch.tensor([0.2, 0.9, -0.3, -1.0, 0.5, 0.0]), 0)


def pi_star(beta):
    return torch.softmax(REF + R / beta, 0)


def objective_value(pi, beta):
    return (pi * R).sum() - beta * (pi * (pi.log() - REF)).sum()


def bt_pairs(n, actions_a, actions_b, generator):
    """Bradley-Terry labelled pairs: P(a preferred) = sigmoid(r_a - r_b)."""
    first = torch.rand(n, generator=generator) < torch.sigmoid(R[actions_a] - R[actions_b])
    return torch.where(first, actions_a, actions_b), torch.where(first, actions_b, actions_a)


def test_offline_dpo_with_full_coverage_reaches_pi_star():
    g = torch.Generator().manual_seed(0)
    all_pairs = torch.tensor(list(itertools.combinations(range(6), 2))).repeat(400, 1)
    w, l = bt_pairs(len(all_pairs), all_pairs[:, 0], all_pairs[:, 1], g)
    beta = 1.0  # labels use scale 1, so the DPO optimum is pi_ref * exp(r / 1)
    logits = REF.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(1500):
        logp = torch.log_softmax(logits, 0)
        loss, _ = losses.dpo_loss(logp[w], logp[l], REF[w], REF[l], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(logits, 0).detach()
    assert (pi - pi_star(beta)).abs().max() < 0.03
    assert objective_value(pi_star(beta), beta) - objective_value(pi, beta) < 5e-3


def test_online_dpo_reaches_pi_star():
    g = torch.Generator().manual_seed(1)
    beta = 1.0
    logits = REF.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.02)
    for _ in range(2500):
        logp = torch.log_softmax(logits, 0)
        a, b = torch.multinomial(logp.exp().detach(), 512, replacement=True, generator=g).view(2, -1)
        keep = a != b
        w, l = bt_pairs(int(keep.sum()), a[keep], b[keep], g)
        loss, _ = losses.dpo_loss(logp[w], logp[l], REF[w], REF[l], beta)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(logits, 0).detach()
    assert (pi - pi_star(beta)).abs().max() < 0.04


def test_dpo_with_deterministic_labels_has_no_finite_optimum():
    pairs = torch.tensor(list(itertools.combinations(range(6), 2)))
    better = R[pairs[:, 0]] > R[pairs[:, 1]]
    w, l = torch.where(better, pairs[:, 0], pairs[:, 1]), torch.where(better, pairs[:, 1], pairs[:, 0])
    logits = REF.clone().requires_grad_(True)
    opt = torch.optim.SGD([logits], lr=1.0)
    margins = []
    for step in range(3000):
        logp = torch.log_softmax(logits, 0)
        loss, stats = losses.dpo_loss(logp[w], logp[l], REF[w], REF[l], 0.5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 1000 == 999:
            margins.append(stats["margin"])
    assert margins[0] < margins[1] < margins[2]


def hypo_on_partial_coverage(lam, steps=800):
    """Deterministic labels over the first 3 actions only: DPO drives their likelihoods down and the
    uncovered actions take the mass; HyPO's online KL term holds pi near pi_ref."""
    g = torch.Generator().manual_seed(2)
    covered = torch.tensor(list(itertools.combinations(range(3), 2)))
    better = R[covered[:, 0]] > R[covered[:, 1]]
    w, l = torch.where(better, covered[:, 0], covered[:, 1]), torch.where(better, covered[:, 1], covered[:, 0])
    logits = REF.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    for _ in range(steps):
        logp = torch.log_softmax(logits, 0)
        loss, _ = losses.dpo_loss(logp[w], logp[l], REF[w], REF[l], 0.1)
        samples = torch.multinomial(logp.exp().detach(), 256, replacement=True, generator=g).view(-1, 2)
        kl = logp[samples].detach() - REF[samples]
        loss = loss + lam * losses.hypo_kl_term(logp[samples], kl)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(logits, 0).detach()
    return float((pi * (pi.log() - REF)).sum())


def test_hypo_keeps_kl_below_dpo_and_falls_with_lambda():
    kl_dpo, kl_small, kl_large = hypo_on_partial_coverage(0.0), hypo_on_partial_coverage(0.5), hypo_on_partial_coverage(5.0)
    assert kl_dpo > kl_small > kl_large
    assert kl_large < 0.5 * kl_dpo


@pytest.mark.parametrize("weights", [lambda r: losses.best_of_n_weights(r, 1),
                                     lambda r: losses.rwr_weights(r, temperature=0.2, max_weight=50.0)],
                         ids=["best_of_4", "rwr"])
def test_max_likelihood_moves_mass_to_the_preferred_action(weights):
    logits = REF.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.05)
    g = torch.Generator().manual_seed(3)
    for _ in range(200):  # on-policy, 4 samples per prompt
        logp = torch.log_softmax(logits, 0)
        samples = torch.multinomial(logp.exp().detach(), 256, replacement=True, generator=g).view(-1, 4)
        loss, _ = losses.weighted_nll(logp[samples], weights(R[samples]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(logits, 0).detach()
    assert pi[0] > 2 * REF.exp()[0] and pi[0] == pi.max()  # action 0 has the highest reward


def test_reinforce_with_moving_average_baseline_reaches_pi_star():
    g = torch.Generator().manual_seed(4)
    beta = 0.5
    logits = REF.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.02)
    baseline = None
    for _ in range(1500):
        logp = torch.log_softmax(logits, 0)
        actions = torch.multinomial(logp.exp().detach(), 256, replacement=True, generator=g)
        shaped = R[actions] - beta * losses.sequence_kl_penalty(logp[actions].detach()[:, None], REF[actions][:, None],
                                                                  torch.ones(len(actions), 1), "k1")
        baseline = shaped.mean().item() if baseline is None else baseline
        loss, _ = losses.policy_gradient_loss(logp[actions], shaped - baseline)
        baseline = 0.9 * baseline + 0.1 * shaped.mean().item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(logits, 0).detach()
    assert objective_value(pi_star(beta), beta) - objective_value(pi, beta) < 5e-3


def test_ppo_with_kl_penalty_reaches_pi_star_and_clips_when_reusing_samples():
    """One-token responses: per-token KL-penalised reward, GAE against a learned value, whitened
    advantages, T = 4 clipped passes over each collected batch."""
    g = torch.Generator().manual_seed(5)
    beta, n = 0.5, 256
    logits = REF.clone().requires_grad_(True)
    value = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([logits, value], lr=0.02)
    mask = torch.ones(n, 1)
    clip_fractions = []
    for iteration in range(250):
        if iteration == 200:  # Adam at lr 0.02 wanders about pi* by ~5e-3 in objective; a quieter end settles it
            opt.param_groups[0]["lr"] = 0.004
        with torch.no_grad():
            old = torch.log_softmax(logits, 0)
            actions = torch.multinomial(old.exp(), n, replacement=True, generator=g)
            old_logp, values_old = old[actions].unsqueeze(-1), value.expand(n, 1).clone()
            token_rewards = losses.kl_penalised_token_rewards(R[actions], old_logp, REF[actions].unsqueeze(-1), mask, beta)
            advantages, returns = losses.gae_advantages(token_rewards, values_old, mask, 1.0, 0.95)
            advantages = losses.masked_whiten(advantages, mask)
        for _ in range(4):
            for mb in torch.randperm(n, generator=g).view(4, -1):
                logp = torch.log_softmax(logits, 0)[actions[mb]].unsqueeze(-1)
                policy_loss, stats = losses.ppo_policy_loss(logp, old_logp[mb], advantages[mb], mask[mb], 0.2)
                value_loss, _ = losses.ppo_value_loss(value.expand(len(mb), 1), values_old[mb], returns[mb], mask[mb], 0.2)
                opt.zero_grad()
                (policy_loss + 0.1 * value_loss).backward()
                opt.step()
                clip_fractions.append(stats["clip_fraction"])
    pi = torch.softmax(logits, 0).detach()
    assert objective_value(pi_star(beta), beta) - objective_value(pi, beta) < 2e-3
    assert max(clip_fractions) > 0 and sum(clip_fractions) / len(clip_fractions) > 0.001


def test_online_dpo_with_an_offline_fraction_ranks_offline_pairs_by_their_labels(monkeypatch):
    from types import SimpleNamespace

    from pftlab.training.sources import MixedPairs, OfflinePairs, OnPolicySamples, fresh_sample_stats
    from tests.test_model import EOS, tiny_model

    policy, ref = tiny_model(seed=1), tiny_model(seed=1)
    pairs = [{"prompt_ids": [3, 4 + i], "chosen_ids": [20 + i, EOS], "rejected_ids": [30, 31, 32, EOS]} for i in range(6)]
    tok = SimpleNamespace(eos_token_id=EOS, pad_token_id=PAD)
    online = OnPolicySamples([p["prompt_ids"] for p in pairs], 2, {"max_new_tokens": 4, "temperature": 1.0, "batch_size": 8},
                             lambda s: torch.arange(len(s), dtype=torch.float), tok, seed=0)
    torch.manual_seed(0)
    batch = MixedPairs(online, OfflinePairs(pairs, PAD, seed=0), fraction=0.5).collect(4, policy, ref)
    assert len(batch) == 4 and batch.extra["offline"].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    offline_rows = batch.seqs.input_ids[4:]
    assert all(offline_rows[i, 2] >= 20 and offline_rows[i + 1, 2] == 30 for i in (0, 2))  # (chosen, rejected)
    stats = fresh_sample_stats(batch)
    assert stats["proxy_reward"] == pytest.approx(1.5)  # mean of the fresh rows' rewards 0..3 only
    weights = sequence_weights_of(ALGORITHMS["online_dpo"], batch, monkeypatch)
    assert (weights[4::2] > 0).all() and (weights[5::2] < 0).all()  # labelled pairs: chosen up, rejected down


def sequence_weights_of(algo, batch, monkeypatch):
    leaves = []

    def fake_token_logprobs(policy, seqs, with_entropy=False):
        leaf = torch.zeros(len(seqs), seqs.input_ids.shape[1] - 1).requires_grad_(True)
        leaves.append(leaf)
        return (leaf, torch.ones_like(leaf)) if with_entropy else leaf

    monkeypatch.setattr(algorithms, "token_logprobs", fake_token_logprobs)
    hp, state = typed_hp(algo.name, HP | {"min_reward_gap": 10.0}), {}
    if algo.begin_step is not None:
        algo.begin_step(batch, hp, state)
    loss, _ = algo.objective(None, batch, hp, state)
    loss.backward()
    return torch.cat([-leaf.grad.sum(-1) for leaf in leaves])


def test_hypo_length_penalty_pushes_down_the_longer_fresh_sample():
    """Penalty per sample = KL + c * |y|: with k = 2 the leave-one-out coefficients change by
    c * (|y_i| - |y_other|), so the objective changes by lam * c * mean((|y_i| - |y_other|) * log pi(y_i))."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=16, n_positions=16, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0,
                                       embd_pdrop=0, attn_pdrop=0, pad_token_id=PAD, bos_token_id=1, eos_token_id=1))
    batch = _batch("hybrid", prompts=2)
    seqs = pack([[3, 4]] * 4, [[5, 1], [5, 6, 7, 1], [6, 1], [7, 7, 7, 7, 1]], PAD)  # lengths 2, 4 | 2, 5
    g = torch.Generator().manual_seed(1)
    batch.samples = SampleBatch(seqs, torch.full((4,), float("nan")), torch.zeros(4, seqs.input_ids.shape[1] - 1),
                                -torch.rand(4, seqs.input_ids.shape[1] - 1, generator=g) * target_mask(seqs), 2)
    hp = HypoHp(beta=0.1, lam=0.5, length_penalty=0.0, samples_per_prompt=2)
    base, _ = ALGORITHMS["hypo"].objective(model, batch, hp, {})
    with_penalty, _ = ALGORITHMS["hypo"].objective(model, batch, dataclasses.replace(hp, length_penalty=0.3), {})
    logp = token_logprobs(model, seqs).sum(-1).detach()
    expected = 0.5 * 0.3 * torch.mean(torch.tensor([-2.0, 2.0, -3.0, 3.0]) * logp)
    assert (with_penalty - base).item() == pytest.approx(expected.item(), rel=1e-5)
