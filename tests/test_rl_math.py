"""Closed-form tests of the RL math: GAE, PPO policy / value losses, explained variance, GRPO advantages."""

from __future__ import annotations

import math

import pytest
import torch

from lerobot_policy_pi_rl.rl.gae import generalized_advantage_estimate, stream_gae
from lerobot_policy_pi_rl.rl.grpo import grpo_advantages, normalize_advantages
from lerobot_policy_pi_rl.rl.ppo_loss import explained_variance, ppo_policy_loss, value_loss

T = torch.tensor
B = lambda *xs: torch.tensor(xs, dtype=torch.bool)  # noqa: E731


def gae(rewards, values, next_values, terminated, done, gamma, lam):
    return generalized_advantage_estimate(
        rewards=rewards,
        values=values,
        next_values=next_values,
        terminated=terminated,
        done=done,
        gamma=gamma,
        lam=lam,
    )


def reference_gae(rewards, values, next_values, terminated, done, gamma, lam):
    """Plain-Python, one environment, written from the formula (the independent oracle)."""
    n = len(rewards)
    adv = [0.0] * n
    running = 0.0
    for t in reversed(range(n)):
        delta = rewards[t] + gamma * next_values[t] * (0.0 if terminated[t] else 1.0) - values[t]
        running = delta + gamma * lam * (0.0 if done[t] else 1.0) * running
        adv[t] = running
    return adv


# ------------------------------------------------------------------------------------------------------------------
# GAE
# ------------------------------------------------------------------------------------------------------------------


def test_gae_constant_values_by_hand():
    # V = 2 everywhere, no reward, no done: δ = γ·2 − 2 = −0.2; A_t = δ + γλ·A_{t+1} with γλ = 0.72.
    values = torch.full((3,), 2.0)
    adv, ret = gae(torch.zeros(3), values, values, B(0, 0, 0), B(0, 0, 0), 0.9, 0.8)
    a2 = -0.2
    a1 = -0.2 + 0.72 * a2
    a0 = -0.2 + 0.72 * a1
    torch.testing.assert_close(adv, T([a0, a1, a2]))
    torch.testing.assert_close(ret, T([a0, a1, a2]) + 2.0)
    assert adv.dtype == torch.float32 and ret.dtype == torch.float32


def test_gae_sparse_reward_at_terminal_step_by_hand():
    # r = [0, 0, 5], V = [1, 2, 3], terminated at t = 2 (its next value 100 must be ignored), γ = λ = 0.5.
    # δ = [0 + .5·2 − 1, 0 + .5·3 − 2, 5 − 3] = [0, −0.5, 2];  A2 = 2, A1 = −0.5 + .25·2 = 0, A0 = 0 + .25·0 = 0.
    adv, ret = gae(T([0.0, 0.0, 5.0]), T([1.0, 2.0, 3.0]), T([2.0, 3.0, 100.0]), B(0, 0, 1), B(0, 0, 1), 0.5, 0.5)
    torch.testing.assert_close(adv, T([0.0, 0.0, 2.0]))
    torch.testing.assert_close(ret, T([1.0, 2.0, 5.0]))
    # With zero values the advantage is the discounted, λ-weighted reward: (γλ)^(T−1−t)·5 for λ < 1 ...
    z = torch.zeros(3)
    adv, _ = gae(T([0.0, 0.0, 5.0]), z, z, B(0, 0, 1), B(0, 0, 1), 0.9, 0.5)
    torch.testing.assert_close(adv, T([5 * 0.45**2, 5 * 0.45, 5.0]))


def test_gae_lambda_one_is_discounted_return_minus_value():
    g = torch.Generator().manual_seed(0)
    steps, envs, gamma = 6, 3, 0.9
    rewards = torch.randn(steps, envs, generator=g)
    values = torch.randn(steps, envs, generator=g)
    next_values = torch.cat([values[1:], torch.randn(1, envs, generator=g)])
    # env 0 terminates at the end, env 1 is truncated at the end (bootstrap), env 2 is just cut (bootstrap).
    terminated = torch.zeros(steps, envs, dtype=torch.bool)
    terminated[-1, 0] = True
    done = torch.zeros(steps, envs, dtype=torch.bool)
    done[-1] = True
    adv, ret = gae(rewards, values, next_values, terminated, done, gamma, 1.0)
    for e in range(envs):
        bootstrap = 0.0 if e == 0 else float(next_values[-1, e])
        for t in range(steps):
            mc = sum(gamma**k * float(rewards[t + k, e]) for k in range(steps - t)) + gamma ** (steps - t) * bootstrap
            assert math.isclose(float(ret[t, e]), mc, rel_tol=1e-5, abs_tol=1e-5)
            assert math.isclose(float(adv[t, e]), mc - float(values[t, e]), rel_tol=1e-5, abs_tol=1e-5)


def test_gae_lambda_zero_is_td_error():
    g = torch.Generator().manual_seed(1)
    rewards, values, next_values = (torch.randn(7, 2, generator=g) for _ in range(3))
    terminated = torch.rand(7, 2, generator=g) < 0.3
    done = terminated | (torch.rand(7, 2, generator=g) < 0.3)
    adv, _ = gae(rewards, values, next_values, terminated, done, 0.97, 0.0)
    td = rewards + 0.97 * next_values * (~terminated).float() - values
    torch.testing.assert_close(adv, td)


def test_truncation_bootstraps_and_termination_does_not():
    one, zero = T([1.0]), T([0.0])
    adv_trunc, _ = gae(one, zero, T([10.0]), B(0), B(1), 0.9, 0.95)
    adv_term, _ = gae(one, zero, T([10.0]), B(1), B(1), 0.9, 0.95)
    torch.testing.assert_close(adv_trunc, T([1.0 + 0.9 * 10.0]))
    torch.testing.assert_close(adv_term, T([1.0]))
    # A truncation stops the trace: the reward of the next episode does not leak back.
    adv, _ = gae(T([0.0, 7.0]), T([0.0, 0.0]), T([3.0, 0.0]), B(0, 1), B(1, 1), 0.5, 1.0)
    torch.testing.assert_close(adv, T([0.5 * 3.0, 7.0]))
    # ... while without the done flag it does (so the previous check has teeth).
    adv, _ = gae(T([0.0, 7.0]), T([0.0, 0.0]), T([3.0, 0.0]), B(0, 1), B(0, 1), 0.5, 1.0)
    torch.testing.assert_close(adv, T([0.5 * 3.0 + 0.5 * 7.0, 7.0]))


def test_gae_over_concatenated_episodes_equals_per_episode():
    g = torch.Generator().manual_seed(2)
    lengths, gamma, lam = [3, 4, 2], 0.95, 0.9
    episodes = []
    for i, n in enumerate(lengths):
        r, v, nv = (torch.randn(n, generator=g) for _ in range(3))
        term = torch.zeros(n, dtype=torch.bool)
        term[-1] = i != 1  # the middle episode is truncated (bootstrapped)
        done = torch.zeros(n, dtype=torch.bool)
        done[-1] = True
        episodes.append((r, v, nv, term, done))
    separate = [gae(*ep, gamma, lam) for ep in episodes]
    joined = gae(*(torch.cat(parts) for parts in zip(*episodes)), gamma, lam)
    torch.testing.assert_close(joined[0], torch.cat([s[0] for s in separate]))
    torch.testing.assert_close(joined[1], torch.cat([s[1] for s in separate]))
    # and agrees with the plain-Python oracle
    r, v, nv, term, done = (torch.cat(parts) for parts in zip(*episodes))
    expected = reference_gae(r.tolist(), v.tolist(), nv.tolist(), term.tolist(), done.tolist(), gamma, lam)
    torch.testing.assert_close(joined[0], T(expected))


def test_gae_2d_equals_columnwise():
    g = torch.Generator().manual_seed(3)
    rewards, values, next_values = (torch.randn(5, 4, generator=g) for _ in range(3))
    terminated = torch.rand(5, 4, generator=g) < 0.2
    done = terminated | (torch.rand(5, 4, generator=g) < 0.2)
    adv, _ = gae(rewards, values, next_values, terminated, done, 0.99, 0.95)
    for e in range(4):
        col, _ = gae(rewards[:, e], values[:, e], next_values[:, e], terminated[:, e], done[:, e], 0.99, 0.95)
        torch.testing.assert_close(adv[:, e], col)


def test_gae_contract_errors_and_no_grad():
    z = torch.zeros(3)
    with pytest.raises(ValueError, match="values has shape"):
        gae(z, torch.zeros(4), z, B(0, 0, 0), B(0, 0, 0), 0.9, 0.9)
    with pytest.raises(ValueError, match="terminated step must also be done"):
        gae(z, z, z, B(0, 1, 0), B(0, 0, 0), 0.9, 0.9)
    with pytest.raises(ValueError, match="gamma"):
        gae(z, z, z, B(0, 0, 0), B(0, 0, 0), 1.5, 0.9)
    with pytest.raises(ValueError, match=r"\[T\] or \[T, N\]"):
        gae(torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), torch.zeros(2, 2, 2), 0.9, 0.9)
    values = torch.ones(3, requires_grad=True)
    adv, ret = gae(T([1.0, 0.0, 0.0]), values, values, T([0, 0, 1]), T([0, 0, 1]), 0.9, 0.9)  # 0/1 ints ok
    assert not adv.requires_grad and not ret.requires_grad


def _stream_reference(rewards, values, next_values, terminated, truncated, stream_id, gamma, lam):
    adv = torch.zeros(len(rewards))
    for s in stream_id.unique().tolist():
        idx = (stream_id == s).nonzero().squeeze(1)  # rows of the stream, in time order
        done = terminated[idx] | truncated[idx]
        done[-1] = True
        a, _ = gae(rewards[idx], values[idx], next_values[idx], terminated[idx], done, gamma, lam)
        adv[idx] = a
    return adv


def test_stream_gae_interleaved_equals_per_stream():
    g = torch.Generator().manual_seed(4)
    lengths = {5: 6, 2: 3, 9: 1, 0: 4}
    # interleave arbitrarily while keeping each stream's own time order
    labels = torch.cat([torch.full((n,), s) for s, n in lengths.items()])
    labels = labels[torch.randperm(len(labels), generator=g)]
    n = len(labels)
    rewards, values, next_values = (torch.randn(n, generator=g) for _ in range(3))
    terminated = torch.rand(n, generator=g) < 0.2
    truncated = (torch.rand(n, generator=g) < 0.2) & ~terminated
    adv, ret = stream_gae(
        rewards=rewards, values=values, next_values=next_values, terminated=terminated, truncated=truncated,
        stream_id=labels, gamma=0.9, lam=0.8,
    )  # fmt: skip
    expected = _stream_reference(rewards, values, next_values, terminated, truncated, labels, 0.9, 0.8)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected + values)
    # Merging two streams into one label changes the result (the test distinguishes streams).
    no_flags = torch.zeros(n, dtype=torch.bool)
    kwargs = dict(rewards=rewards, values=values, next_values=next_values, terminated=no_flags, truncated=no_flags)
    separate, _ = stream_gae(**kwargs, stream_id=labels, gamma=0.9, lam=0.8)
    merged = torch.where(labels == 2, torch.full_like(labels, 5), labels)
    joined, _ = stream_gae(**kwargs, stream_id=merged, gamma=0.9, lam=0.8)
    assert not torch.allclose(separate, joined)


def test_stream_gae_last_row_bootstraps_by_hand():
    # Streams 7 and 3 interleaved: 7: r=[1, 0] not done at the end -> bootstraps V_next = 4; 3: r=[2] terminated.
    adv, _ = stream_gae(
        rewards=T([1.0, 2.0, 0.0]),
        values=T([0.0, 0.0, 0.0]),
        next_values=T([0.0, 50.0, 4.0]),
        terminated=B(0, 1, 0),
        truncated=B(0, 0, 0),
        stream_id=T([7, 3, 7]),
        gamma=0.5,
        lam=1.0,
    )
    torch.testing.assert_close(adv, T([1.0 + 0.5 * (0.5 * 4.0), 2.0, 0.5 * 4.0]))
    with pytest.raises(ValueError, match=r"flat batch"):
        stream_gae(
            rewards=torch.zeros(2, 2), values=torch.zeros(2, 2), next_values=torch.zeros(2, 2),
            terminated=torch.zeros(2, 2), truncated=torch.zeros(2, 2), stream_id=torch.zeros(2, 2, dtype=torch.long),
            gamma=0.9, lam=0.9,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------------------------
# PPO policy loss
# ------------------------------------------------------------------------------------------------------------------

RATIOS = [0.5, 1.0, 1.5, 1.1, 0.5, 1.5]
ADVS = [1.0, -1.0, 1.0, -1.0, -1.0, -1.0]
# per row max(−A r, −A clip(r, 0.8, 1.2)):
#   r .5 A+ : max(−.5, −.8) = −.5      r 1 A− : 1          r 1.5 A+ : max(−1.5, −1.2) = −1.2
#   r 1.1 A−: 1.1                      r .5 A−: max(.5, .8) = .8    r 1.5 A−: max(1.5, 1.2) = 1.5
EXPECTED_ROWS = [-0.5, 1.0, -1.2, 1.1, 0.8, 1.5]


def _policy_inputs(ratios=RATIOS, advs=ADVS):
    old = torch.linspace(-3.0, 1.0, len(ratios))  # arbitrary (positive log-probs are legitimate)
    log_prob = (old + torch.log(T(ratios))).requires_grad_(True)
    return log_prob, old, T(advs)


def test_ppo_loss_by_hand():
    log_prob, old, adv = _policy_inputs()
    loss, stats = ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(loss, T(sum(EXPECTED_ROWS) / 6))
    torch.testing.assert_close(stats.clip_fraction, T(4 / 6))
    torch.testing.assert_close(stats.ratio_mean, T(sum(RATIOS) / 6))
    torch.testing.assert_close(stats.ratio_max, T(1.5))
    kl = sum((r - 1) - math.log(r) for r in RATIOS) / 6
    torch.testing.assert_close(stats.approx_kl, T(kl))
    assert loss.dtype == torch.float32 and not stats.approx_kl.requires_grad


def test_ratio_one_gives_zero_clip_fraction_and_minus_mean_advantage():
    adv = T([0.3, -2.0, 1.5, 0.7])
    lp = torch.randn(4).requires_grad_(True)
    loss, stats = ppo_policy_loss(log_prob=lp, old_log_prob=lp.detach().clone(), advantages=adv, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(loss, -adv.mean())
    assert float(stats.clip_fraction) == 0.0
    assert float(stats.approx_kl) == 0.0
    assert float(stats.ratio_mean) == 1.0 and float(stats.ratio_max) == 1.0
    # d loss / d ℓ_i = −A_i · r_i / N = −A_i / N at r = 1
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 4)


def test_gradient_is_zero_exactly_where_clipped_on_the_advantage_side():
    log_prob, old, adv = _policy_inputs()
    loss, _ = ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2)
    loss.backward()
    grad = log_prob.grad
    # rows: (.5,+) unclipped side, (1,−) inside, (1.5,+) CLIPPED, (1.1,−) inside, (.5,−) CLIPPED, (1.5,−) unbounded side
    clipped = B(0, 0, 1, 0, 1, 0)
    assert torch.all(grad[clipped] == 0)
    expected = -T(ADVS) * T(RATIOS) / 6
    torch.testing.assert_close(grad[~clipped], expected[~clipped])
    assert torch.all(grad[~clipped] != 0)


def test_asymmetric_clip():
    # clip range [0.9, 1.3]: r = 1.25 with A > 0 is inside (grad), r = 0.85 with A < 0 is clipped (no grad).
    log_prob, old, adv = _policy_inputs(ratios=[1.25, 0.85, 1.35], advs=[1.0, -1.0, 1.0])
    loss, stats = ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.1, clip_high=0.3)
    loss.backward()
    torch.testing.assert_close(loss, T((-1.25 + 0.9 - 1.3) / 3))
    assert log_prob.grad[0] != 0 and log_prob.grad[1] == 0 and log_prob.grad[2] == 0
    torch.testing.assert_close(stats.clip_fraction, T(2 / 3))


def test_dual_clip():
    # A < 0 with r = 5: standard loss 5·|A| (unbounded, gradient pushes r down); dual clip 3 caps it at 3·|A|.
    log_prob, old, adv = _policy_inputs(ratios=[5.0, 2.0, 5.0, 0.5], advs=[-2.0, -2.0, 2.0, -2.0])
    plain, _ = ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2)
    torch.testing.assert_close(plain, T((10.0 + 4.0 - 2.4 + 1.6) / 4))
    loss, stats = ppo_policy_loss(
        log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2, dual_clip=3.0
    )
    torch.testing.assert_close(loss, T((6.0 + 4.0 - 2.4 + 1.6) / 4))
    torch.testing.assert_close(stats.dual_clip_fraction, T(1 / 4))
    loss.backward()
    g = log_prob.grad
    assert g[0] == 0  # dual-clipped
    torch.testing.assert_close(g[1], T(2.0 * 2.0 / 4))  # r = 2 < 3: still −A·r
    assert g[2] == 0 and g[3] == 0  # standard clip unaffected by the dual clip
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2, dual_clip=0.5)


def test_mask_excludes_rows():
    log_prob, old, adv = _policy_inputs()
    mask = B(1, 0, 1, 1, 0, 1)
    # a non-finite log-prob in an excluded row must not poison the loss
    old = old.clone()
    old[1] = float("nan")
    loss, stats = ppo_policy_loss(
        log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2, mask=mask
    )
    kept = [x for x, m in zip(EXPECTED_ROWS, mask.tolist(), strict=True) if m]
    torch.testing.assert_close(loss, T(sum(kept) / 4))
    torch.testing.assert_close(stats.clip_fraction, T(3 / 4))  # kept ratios .5, 1.5, 1.1, 1.5
    torch.testing.assert_close(stats.ratio_max, T(1.5))
    loss.backward()
    assert log_prob.grad[4] == 0 and torch.isfinite(log_prob.grad[[0, 2, 3, 5]]).all()
    # all rows masked: zero loss that still backpropagates
    lp = log_prob.detach().clone().requires_grad_(True)
    loss, stats = ppo_policy_loss(
        log_prob=lp, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2, mask=torch.zeros(6, dtype=torch.bool)
    )
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(stats.clip_fraction) == 0.0
    with pytest.raises(ValueError, match="mask has shape"):
        ppo_policy_loss(log_prob=lp, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2, mask=B(1, 0))


@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 2)])
def test_action_and_element_level_log_probs_broadcast_row_advantages(shape):
    g = torch.Generator().manual_seed(5)
    old = torch.randn(shape, generator=g)
    log_prob = (old + 0.4 * torch.randn(shape, generator=g)).requires_grad_(True)
    adv = torch.randn(4, generator=g)
    loss, stats = ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=adv, clip_low=0.2, clip_high=0.2)
    full_adv = adv.reshape((4,) + (1,) * (len(shape) - 1)).expand(shape)
    r = torch.exp(log_prob.detach() - old)
    expected = torch.maximum(-full_adv * r, -full_adv * r.clamp(0.8, 1.2)).mean()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(stats.clip_fraction, ((r < 0.8) | (r > 1.2)).float().mean())
    # explicit full-shape advantages give the same loss
    loss_full, _ = ppo_policy_loss(
        log_prob=log_prob, old_log_prob=old, advantages=full_adv.clone(), clip_low=0.2, clip_high=0.2
    )
    torch.testing.assert_close(loss_full, loss)
    with pytest.raises(ValueError, match="advantages has shape"):
        ppo_policy_loss(log_prob=log_prob, old_log_prob=old, advantages=torch.zeros(3), clip_low=0.2, clip_high=0.2)


def test_ppo_contract_errors():
    lp = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match="old_log_prob requires grad"):
        ppo_policy_loss(log_prob=lp, old_log_prob=lp * 1.0, advantages=torch.ones(3), clip_low=0.2, clip_high=0.2)
    with pytest.raises(TypeError, match="float32"):
        ppo_policy_loss(
            log_prob=lp.bfloat16(), old_log_prob=torch.zeros(3, dtype=torch.bfloat16), advantages=torch.ones(3),
            clip_low=0.2, clip_high=0.2,
        )  # fmt: skip
    with pytest.raises(ValueError, match="old_log_prob has shape"):
        ppo_policy_loss(log_prob=lp, old_log_prob=torch.zeros(4), advantages=torch.ones(3), clip_low=0.2, clip_high=0.2)


# ------------------------------------------------------------------------------------------------------------------
# Value loss, explained variance
# ------------------------------------------------------------------------------------------------------------------


def test_huber_value_loss_by_hand():
    # δ = 1: |e| = .5 -> ½·.25 = .125 ; |e| = 3 -> 1·(3 − .5) = 2.5
    values = T([0.5, -3.0]).requires_grad_(True)
    loss = value_loss(values=values, old_values=torch.zeros(2), returns=torch.zeros(2), huber_delta=1.0)
    torch.testing.assert_close(loss, T((0.125 + 2.5) / 2))
    loss.backward()
    torch.testing.assert_close(values.grad, T([0.5 / 2, -1.0 / 2]))  # quadratic vs linear region


def test_value_clipping_by_hand():
    # V_old = 0, V = 1, c = 0.2 -> V_clipped = 0.2; δ = 10 (quadratic region).
    # R = 2: unclipped ½·1 = .5, clipped ½·1.8² = 1.62 -> max = 1.62 (clipped branch: no gradient)
    # R = 0: unclipped ½·1 = .5, clipped ½·.04 = .02   -> max = .5  (unclipped branch: gradient V − R)
    values = T([1.0, 1.0]).requires_grad_(True)
    loss = value_loss(values=values, old_values=T([0.0, 0.0]), returns=T([2.0, 0.0]), clip=0.2, huber_delta=10.0)
    torch.testing.assert_close(loss, T((1.62 + 0.5) / 2))
    loss.backward()
    torch.testing.assert_close(values.grad, T([0.0, 0.5]))
    # without clipping the first row is the plain ½ error²
    unclipped = value_loss(values=values, old_values=T([0.0, 0.0]), returns=T([2.0, 0.0]), huber_delta=10.0)
    torch.testing.assert_close(unclipped, T((0.5 + 0.5) / 2))
    masked = value_loss(
        values=values, old_values=T([0.0, 0.0]), returns=T([2.0, 0.0]), clip=0.2, huber_delta=10.0, mask=B(0, 1)
    )
    torch.testing.assert_close(masked, T(0.5))
    with pytest.raises(ValueError, match="returns has shape"):
        value_loss(values=values, old_values=T([0.0, 0.0]), returns=T([2.0]), huber_delta=10.0)


def test_explained_variance_limits():
    target = T([1.0, 2.0, 4.0, 7.0])
    torch.testing.assert_close(explained_variance(target.clone(), target), T(1.0))
    torch.testing.assert_close(explained_variance(torch.full((4,), target.mean().item()), target), T(0.0))
    # pred = 0: 1 − Var[target]/Var[target] = 0 too (a constant offset is not penalised) ...
    torch.testing.assert_close(explained_variance(torch.zeros(4), target), T(0.0))
    # ... but anti-correlated predictions are worse than the mean: 1 − Var[2t]/Var[t] = −3
    torch.testing.assert_close(explained_variance(-target, target), T(-3.0))
    assert math.isnan(float(explained_variance(T([1.0, 2.0]), T([3.0, 3.0]))))


# ------------------------------------------------------------------------------------------------------------------
# GRPO
# ------------------------------------------------------------------------------------------------------------------


def test_grpo_advantages_by_hand_and_group_filtering():
    # group 4 (rows 0, 2, 5): scores [1, 0, 0] -> mean 1/3, unbiased std sqrt(1/3)
    # group 1 (rows 1, 3): [1, 1] all success -> dropped;  group 8 (rows 4, 6): [0, 0] all fail -> dropped
    # group 2 (row 7): a single rollout -> no variance -> dropped
    scores = T([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    groups = T([4, 1, 4, 1, 8, 4, 8, 2])
    adv, keep = grpo_advantages(scores=scores, group_ids=groups)
    std = math.sqrt(1 / 3)
    a_hi, a_lo = (2 / 3) / (std + 1e-6), (-1 / 3) / (std + 1e-6)
    torch.testing.assert_close(adv, T([a_hi, 0.0, a_lo, 0.0, 0.0, a_lo, 0.0, 0.0]))
    assert keep.tolist() == [True, False, True, False, False, True, False, False]
    _, keep_all = grpo_advantages(scores=scores, group_ids=groups, drop_uniform_groups=False)
    assert keep_all.all()
    # non-binary uniform scores that a float variance would not see as exactly uniform
    adv, keep = grpo_advantages(scores=T([0.1, 0.1, 0.1, 0.3, 0.7]), group_ids=T([0, 0, 0, 1, 1]))
    assert keep.tolist() == [False, False, False, True, True]
    assert adv[:3].abs().max() == 0
    torch.testing.assert_close(adv[3:], T([-0.2, 0.2]) / (math.sqrt(0.08) + 1e-6))


def test_grpo_rejects_ungrouped_rows():
    with pytest.raises(ValueError, match="negative group_id"):
        grpo_advantages(scores=T([1.0, 0.0]), group_ids=T([0, -1]))
    with pytest.raises(TypeError, match="integer"):
        grpo_advantages(scores=T([1.0, 0.0]), group_ids=T([0.0, 0.0]))


def test_normalize_advantages():
    adv = T([1.0, 2.0, 3.0, 100.0])
    out = normalize_advantages(adv)
    torch.testing.assert_close(out.mean(), T(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(out.std(), T(1.0), atol=1e-4, rtol=0)
    # statistics over kept rows only: mean 2, std 1 -> [-1, 0, 1, 98] (up to eps)
    out = normalize_advantages(adv, mask=B(1, 1, 1, 0), eps=0.0)
    torch.testing.assert_close(out, T([-1.0, 0.0, 1.0, 98.0]))
    out = normalize_advantages(adv, mask=B(1, 1, 1, 0))
    torch.testing.assert_close(out, (adv - 2.0) / (1.0 + 1e-5))


def test_complete_groups_needs_every_episode_of_a_group_to_have_ended():
    from lerobot_policy_pi_rl.rl.grpo import complete_groups

    T = torch.tensor
    group_ids = T([5, 5, 5, 7, 7, 9, -1, 5])
    ends = T([False, True, False, True, False, True, True, True])
    # group 5: two episode ends (rows 1 and 7) -> complete at size 2; group 7 has one; 9 one; -1 never.
    assert complete_groups(group_ids=group_ids, episode_ends=ends, group_size=2).tolist() == [
        True, True, True, False, False, False, False, True]
    assert complete_groups(group_ids=group_ids, episode_ends=ends, group_size=1).tolist() == [
        True, True, True, True, True, True, False, True]
    assert not complete_groups(group_ids=group_ids, episode_ends=ends, group_size=3).any()
    with pytest.raises(ValueError, match="group_size=0"):
        complete_groups(group_ids=group_ids, episode_ends=ends, group_size=0)
