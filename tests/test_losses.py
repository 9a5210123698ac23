"""Each loss against numbers worked by hand, and RLOO with a KL penalty against the known optimum."""
import math

import pytest
import torch

from pftlab.algorithms import losses


def test_dpo_loss_hand_worked():
    # pair 1: policy moved chosen +1 nat and rejected -1 nat vs ref; pair 2: no change.
    logp_w, ref_w = torch.tensor([-4.0, -2.0]), torch.tensor([-5.0, -2.0])
    logp_l, ref_l = torch.tensor([-7.0, -3.0]), torch.tensor([-6.0, -3.0])
    loss, stats = losses.dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=0.5)
    # h1 = 0.5 * ((-4 + 5) - (-7 + 6)) = 1.0 ; h2 = 0
    expected = (math.log(1 + math.exp(-1.0)) + math.log(2.0)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert stats["implicit_reward_chosen"] == pytest.approx((0.5 + 0.0) / 2)
    assert stats["implicit_reward_rejected"] == pytest.approx((-0.5 + 0.0) / 2)
    assert stats["pair_accuracy"] == pytest.approx(0.5)


def test_dpo_gradient_pushes_chosen_up_and_rejected_down():
    logp_w = torch.tensor([-3.0], requires_grad=True)
    logp_l = torch.tensor([-3.0], requires_grad=True)
    loss, _ = losses.dpo_loss(logp_w, logp_l, torch.tensor([-3.0]), torch.tensor([-3.0]), beta=2.0)
    loss.backward()
    # d/dh -log sigmoid(h) at h=0 is -0.5; h = 2*(logp_w - logp_l)
    assert logp_w.grad.item() == pytest.approx(-1.0)
    assert logp_l.grad.item() == pytest.approx(1.0)


def test_leave_one_out_advantages_hand_worked():
    rewards = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    adv = losses.leave_one_out_advantages(rewards)
    expected = torch.tensor([[1 - 4.0, 2 - 3.5, 6 - 1.5], [0 - 1.5, 0 - 1.5, 3 - 0.0]])
    assert torch.allclose(adv, expected)
    with pytest.raises(ValueError):
        losses.leave_one_out_advantages(torch.ones(3, 1))


def test_kl_penalised_rewards_and_policy_gradient_loss():
    """The shaped reward r - kl_coef * k1 that RLOO and REINFORCE use (algorithms/table.py _shaped_rewards)."""
    penalty = losses.sequence_kl_penalty(torch.tensor([[-2.0], [-5.0]]), torch.tensor([[-3.0], [-4.0]]), torch.ones(2, 1), "k1")
    shaped = torch.tensor([1.0, 0.0]) - 0.5 * penalty
    assert torch.allclose(shaped, torch.tensor([1.0 - 0.5 * 1.0, 0.0 - 0.5 * -1.0]))
    logp = torch.tensor([-2.0, -5.0], requires_grad=True)
    advantages = torch.tensor([2.0, -1.0], requires_grad=True)
    loss, stats = losses.policy_gradient_loss(logp, advantages)
    assert loss.item() == pytest.approx(-(2.0 * -2.0 + -1.0 * -5.0) / 2)
    loss.backward()
    assert torch.allclose(logp.grad, torch.tensor([-1.0, 0.5]))  # -A/n
    assert advantages.grad is None  # advantages are constants of the surrogate
    assert stats["negative_weight_fraction"] == pytest.approx(0.5)


def test_kl_estimates_hand_worked():
    token_logp = torch.tensor([[-1.0, -2.0, 0.0]])
    token_ref = torch.tensor([[-1.5, -1.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third position is padding and must not count
    k1, k3 = losses.kl_estimates(token_logp, token_ref, mask)
    assert k1.item() == pytest.approx(0.5 + -1.0)
    expected_k3 = (math.exp(-0.5) - 1 + 0.5) + (math.exp(1.0) - 1 - 1.0)
    assert k3.item() == pytest.approx(expected_k3, rel=1e-6)


def test_sft_and_bradley_terry_losses():
    loss, _ = losses.sft_loss(torch.tensor([[-1.0, -3.0, -100.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert loss.item() == pytest.approx(2.0)
    loss, stats = losses.bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    assert loss.item() == pytest.approx((math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2, rel=1e-6)
    assert stats["accuracy"] == 0.5


def test_rloo_with_kl_penalty_reaches_the_analytic_optimum():
    """On a 5-armed bandit, RLOO on r - beta*log(pi/pi_ref) converges to pi* ~ pi_ref * exp(r / beta)."""
    torch.manual_seed(0)
    r = torch.tensor([1.0, 0.0, 0.5, -1.0, 0.2])
    ref_logits = torch.tensor([0.5, 1.0, 0.0, 0.3, -0.5])
    log_ref = torch.log_softmax(ref_logits, 0)
    beta = 0.5
    pi_star = torch.softmax(log_ref + r / beta, 0)
    logits = ref_logits.clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=0.02)
    k, prompts = 4, 64
    for _ in range(1500):
        log_pi = torch.log_softmax(logits, 0)
        actions = torch.multinomial(log_pi.exp().detach(), prompts * k, replacement=True)
        logp = log_pi[actions]
        shaped = r[actions] - beta * losses.sequence_kl_penalty(logp.detach()[:, None], log_ref[actions][:, None],
                                                                  torch.ones(len(actions), 1), "k1")
        adv = losses.leave_one_out_advantages(shaped.view(prompts, k)).view(-1)
        loss, _ = losses.policy_gradient_loss(logp, adv)
        opt.zero_grad()
        loss.backward()
        opt.step()
    pi = torch.softmax(logits, 0).detach()
    objective = lambda p: (p * r).sum() - beta * (p * (p.log() - log_ref)).sum()
    assert objective(pi_star) - objective(pi) < 5e-3
    assert torch.allclose(pi, pi_star, atol=0.03)


def test_ppo_token_rewards_and_gae_hand_worked():
    mask = torch.tensor([[0.0, 1.0, 1.0, 0.0]])  # response tokens at positions 1 and 2
    old, ref = torch.tensor([[0.0, -1.0, -2.0, 0.0]]), torch.tensor([[0.0, -2.0, -1.0, 0.0]])
    rewards = losses.kl_penalised_token_rewards(torch.tensor([3.0]), old, ref, mask, kl_coef=0.5)
    assert rewards.tolist() == [[0.0, -0.5, 0.5 + 3.0, 0.0]]  # -0.5 * (old - ref); the score at the last token
    values = torch.tensor([[9.0, 1.0, 2.0, 9.0]])  # values outside the response must not leak in
    adv, ret = losses.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=2: delta = 3.5 + 0 - 2 = 1.5 ; t=1: delta = -0.5 + 2 - 1 = 0.5, A = 0.5 + 0.5 * 1.5 = 1.25
    assert torch.allclose(adv, torch.tensor([[0.0, 1.25, 1.5, 0.0]]))
    assert torch.allclose(ret, torch.tensor([[0.0, 2.25, 3.5, 0.0]]))
    white = losses.masked_whiten(torch.tensor([[5.0, 1.0, 3.0, 7.0]]), mask)
    # TRL 0.11 (trl/core.py masked_whiten, masked_var(unbiased=True)): mean 2, variance 1 * n / (n - 1) = 2
    assert torch.allclose(white, torch.tensor([[0.0, -1.0, 1.0, 0.0]]) / (2.0 + 1e-8) ** 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        losses.masked_whiten(torch.tensor([[5.0, 1.0]]), torch.tensor([[0.0, 1.0]]))


def test_ppo_clipped_losses_hand_worked():
    mask = torch.ones(1, 3)
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_(True)  # ratios 1.5, 0.5, 1.1
    adv = torch.tensor([[1.0, 1.0, -2.0]])
    loss, stats = losses.ppo_policy_loss(logp, old, adv, mask, clip=0.2)
    # per token max(-A r, -A clip(r)): max(-1.5, -1.2) = -1.2 (clipped), max(-0.5, -0.8) = -0.5, max(2.2, 2.2) = 2.2
    assert loss.item() == pytest.approx((-1.2 - 0.5 + 2.2) / 3)
    assert stats["clip_fraction"] == pytest.approx(1 / 3)
    loss.backward()
    assert logp.grad[0, 0] == 0 and logp.grad[0, 1] < 0 and logp.grad[0, 2] > 0  # no gradient where clipped
    values, old_v, ret = torch.tensor([[2.0, 0.0]]), torch.tensor([[1.0, 0.0]]), torch.tensor([[3.0, 1.0]])
    v_loss, stats = losses.ppo_value_loss(values, old_v, ret, torch.ones(1, 2), clip=0.5)
    # token 0: max((2-3)^2, (1.5-3)^2) = 2.25 ; token 1: max(1, 1) = 1 -> 0.5 * mean = 0.8125
    assert v_loss.item() == pytest.approx(0.8125) and stats["value_clip_fraction"] == pytest.approx(0.5)
    # TRL's val/clipfrac counts the tokens where the clipped error is the larger one: here V left the clip range
    # (2 vs 1 +- 0.5) toward the return, so the clipped error (1.5 - 1)^2 is the smaller one and does not count
    _, stats = losses.ppo_value_loss(torch.tensor([[2.0]]), torch.tensor([[1.0]]), torch.tensor([[1.0]]),
                                     torch.ones(1, 1), clip=0.5)
    assert stats["value_clip_fraction"] == 0.0


def test_adaptive_kl_coefficient_and_k3_penalty():
    assert losses.adaptive_kl_coef(0.1, 6.0, 6.0, 100, 10) == pytest.approx(0.1)  # on target: unchanged
    assert losses.adaptive_kl_coef(0.1, 12.0, 6.0, 100, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))  # capped at +20%
    assert losses.adaptive_kl_coef(0.1, 5.4, 6.0, 100, 10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    logp, ref, mask = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-1.0 + math.log(2), -1.0]]), torch.ones(1, 2)
    assert losses.sequence_kl_penalty(logp, ref, mask, "k1").item() == pytest.approx(-math.log(2))
    assert losses.sequence_kl_penalty(logp, ref, mask, "k3").item() == pytest.approx(2 - 1 - math.log(2))


def test_clipped_policy_gradient_hand_worked():
    """ratio = pi / pi_old per sequence; a sample whose ratio left [0.8, 1.2] in its advantage's direction
    stops pushing, the others get A * ratio * grad log pi."""
    logp = torch.tensor([0.5, 0.5, 0.0, -0.1], requires_grad=True)
    old = torch.zeros(4)
    adv = torch.tensor([1.0, -1.0, 2.0, -1.0])
    loss, stats = losses.clipped_policy_gradient_loss(logp, old, adv, clip=0.2)
    r = torch.exp(torch.tensor([0.5, 0.5, 0.0, -0.1]))
    # sample 0: A > 0, ratio e^0.5 > 1.2 -> clipped at 1.2 (constant); sample 1: A < 0 -> max picks the unclipped
    expected = (-1.0 * 1.2 + 1.0 * r[1] - 2.0 * 1.0 + 1.0 * r[3]) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert logp.grad.tolist() == pytest.approx([0.0, r[1].item() / 4, -2.0 / 4, r[3].item() / 4], rel=1e-6)
    assert stats["clip_fraction"] == 0.25
    # at ratio 1 the gradient is the plain policy gradient's
    logp2 = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses.clipped_policy_gradient_loss(logp2, logp2.detach(), torch.tensor([1.0, -3.0]), 0.2)[0].backward()
    plain = torch.tensor([-1.0, -2.0], requires_grad=True)
    losses.policy_gradient_loss(plain, torch.tensor([1.0, -3.0]))[0].backward()
    assert torch.allclose(logp2.grad, plain.grad)
