"""Closed-form and seeded statistical tests of the flow-chain math (`lerobot_policy_pi_rl.flow`).

Time convention: t = 1 noise, t = 0 action; x_t = t·ε + (1 − t)·a.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from lerobot.policies.common.flow_matching import euler_integrate
from lerobot_policy_pi_rl.flow import (
    chain_log_prob,
    chain_step_log_probs,
    flow_noise_step,
    flow_sde_coefficient_table,
    flow_sde_coefficients,
    flow_sde_sigma,
    flow_sde_step,
    gaussian_entropy,
    gaussian_log_prob,
    gaussian_log_prob_of_deviation,
    gaussian_scale_terms,
    linear_chain_log_probs,
    noise_std_from_raw,
    one_step_chain_log_prob,
    reduce_log_prob,
    sample_chain,
    sample_linear_chain,
    score_transition,
    standard_normal_log_prob,
    time_grid,
)
from lerobot_policy_pi_rl.heads import NoiseHead

# ------------------------------------------------------------------------------------------------------------------
# time grid
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [1, 3, 4, 5, 7, 10, 50])
def test_time_grid_equals_lerobot_euler_times(num_steps):
    seen: list[Tensor] = []

    def record(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    euler_integrate(record, torch.zeros(2, 1), num_steps)
    grid = time_grid(num_steps)
    assert grid.dtype == torch.float32 and grid.shape == (num_steps + 1,)
    assert torch.equal(grid[:-1], torch.stack([t[0] for t in seen]))
    assert all(torch.equal(t, t[:1].expand(2)) for t in seen)
    assert grid[0] == 1.0 and grid[-1] == 0.0
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(0)


# ------------------------------------------------------------------------------------------------------------------
# Gaussian
# ------------------------------------------------------------------------------------------------------------------


def test_gaussian_log_prob_and_entropy_match_torch_normal():
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(4, 3, 2, generator=g), torch.randn(4, 3, 2, generator=g)
    std = torch.rand(4, 3, 2, generator=g) * 2 + 0.01
    reference = torch.distributions.Normal(mean, std)
    torch.testing.assert_close(gaussian_log_prob(x, mean, std), reference.log_prob(x))
    torch.testing.assert_close(gaussian_entropy(std), reference.entropy())
    torch.testing.assert_close(standard_normal_log_prob(x), torch.distributions.Normal(0.0, 1.0).log_prob(x))
    # small std gives positive log-densities, which are legitimate
    assert gaussian_log_prob(mean, mean, torch.full_like(std, 0.01)).min() > 0


def test_zero_std_contributes_exactly_zero_with_zero_gradients():
    x = torch.tensor([0.3, 1.0, -2.0], requires_grad=True)
    mean = torch.tensor([0.0, 5.0, -2.0], requires_grad=True)
    std = torch.tensor([0.5, 0.0, 0.0], requires_grad=True)
    log_prob = gaussian_log_prob(x, mean, std)
    entropy = gaussian_entropy(std)
    assert log_prob[1] == 0 and log_prob[2] == 0 and entropy[1] == 0 and entropy[2] == 0
    (log_prob.sum() + entropy.sum()).backward()
    for grad in (x.grad, mean.grad, std.grad):
        assert torch.isfinite(grad).all()
        assert grad[1] == 0 and grad[2] == 0
    # the stochastic element does get its gradient (d/dmean log N = (x − mean)/std²)
    torch.testing.assert_close(mean.grad[0], torch.tensor(0.3 / 0.25))


def test_gaussian_scale_terms_by_hand_and_the_shared_density():
    std = torch.tensor([0.5, 0.0, 2.0, 0.0])
    safe_std, log_normalizer = gaussian_scale_terms(std)
    assert safe_std.tolist() == [0.5, 1.0, 2.0, 1.0]
    assert log_normalizer[1] == 0 and log_normalizer[3] == 0
    expected = torch.log(torch.tensor([0.5, 2.0])) + 0.5 * math.log(2 * math.pi)
    torch.testing.assert_close(log_normalizer[[0, 2]], expected)
    # with them, the unmasked density is gaussian_log_prob bit for bit; an element at its mean with std 0 scores 0
    x, mean = torch.tensor([0.3, -1.0, 1.7, 4.0]), torch.tensor([0.1, -1.0, -0.4, 4.0])
    unmasked = gaussian_log_prob_of_deviation(x - mean, safe_std, log_normalizer)
    assert torch.equal(unmasked, gaussian_log_prob(x, mean, std))
    # ...but an element off its mean with std 0 does not: the masking is what gaussian_log_prob adds
    assert gaussian_log_prob_of_deviation(x + 1 - mean, safe_std, log_normalizer)[1] != 0


# ------------------------------------------------------------------------------------------------------------------
# Flow-SDE
# ------------------------------------------------------------------------------------------------------------------


def _nonlinear_velocity(x: Tensor, t: Tensor) -> Tensor:
    """A velocity that depends nonlinearly on x and t (time broadcast from `[B]`)."""
    t = t.view(-1, *([1] * (x.dim() - 1)))
    return torch.sin(3.0 * x) * (1.5 - t) + t.square() * x - 0.7


@pytest.mark.parametrize("num_steps", [1, 4, 10])
@pytest.mark.parametrize("noise_level", [0.0, torch.zeros(3, 1, 1)], ids=["float", "tensor"])
def test_flow_sde_with_zero_noise_is_exactly_lerobot_euler(num_steps, noise_level):
    noise = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(1))
    expected = euler_integrate(_nonlinear_velocity, noise, num_steps)
    dt = 1.0 / num_steps

    def step(x, t, stochastic):
        return flow_sde_step(x, _nonlinear_velocity(x, t), t.view(-1, 1, 1), dt=dt, noise_level=noise_level)

    chain, step_log_probs, stds = sample_chain(
        step, noise, times=time_grid(num_steps), stochastic=torch.ones(3, num_steps, dtype=torch.bool)
    )
    assert torch.equal(chain[:, -1], expected)
    assert torch.equal(chain[:, 0], noise)
    assert torch.all(stds == 0) and torch.all(step_log_probs == 0)


@pytest.mark.parametrize("num_steps", [1, 2, 3, 4, 5, 7, 10, 64])
@pytest.mark.parametrize("noise_level", [0.05, 0.2, 0.3, 0.33, 0.5, 0.7, 1.0])
def test_flow_sde_first_step_std_is_exactly_the_noise_level(num_steps, noise_level):
    x = torch.randn(2, 3, 4)
    t = time_grid(num_steps)[0]
    _, std = flow_sde_step(x, torch.zeros_like(x), t, dt=1.0 / num_steps, noise_level=noise_level)
    assert torch.all(std == torch.tensor(noise_level, dtype=torch.float32))
    per_sample = torch.tensor([noise_level, 0.0]).view(2, 1, 1)
    _, std = flow_sde_step(x, torch.zeros_like(x), t.expand(2).view(2, 1, 1), dt=1.0 / num_steps, noise_level=per_sample)
    assert torch.all(std[0] == torch.tensor(noise_level)) and torch.all(std[1] == 0)


def test_flow_sde_sigma_and_later_stds_by_hand():
    # K = 4, a = 0.5: sigma(t) = a·sqrt(t / (1 − t)) for t < 1; std = sqrt(dt)·sigma.
    times = time_grid(4)
    sigma = flow_sde_sigma(times[:-1], noise_level=0.5, dt=0.25)
    expected = [0.5 * math.sqrt(1 / 0.25)] + [0.5 * math.sqrt(t / (1 - t)) for t in (0.75, 0.5, 0.25)]
    torch.testing.assert_close(sigma, torch.tensor(expected))
    x = torch.zeros(1, 1, 1)
    for k in range(1, 4):
        _, std = flow_sde_step(x, x, times[k], dt=0.25, noise_level=0.5)
        torch.testing.assert_close(std.flatten()[0], torch.tensor(0.5 * expected[k]))


@pytest.mark.parametrize("num_steps", [1, 4, 10])
@pytest.mark.parametrize("noise_level", [0.0, 0.3, 0.5, 1.0])
def test_flow_sde_coefficient_table_is_sde_where_stochastic_and_exactly_euler_elsewhere(num_steps, noise_level):
    times = time_grid(num_steps)
    dt = 1.0 / num_steps
    g = torch.Generator().manual_seed(num_steps)
    patterns = torch.cat([torch.eye(num_steps, dtype=torch.bool), torch.rand(3, num_steps, generator=g) < 0.5])
    x_coef, v_coef, std = flow_sde_coefficient_table(times, patterns, noise_level=noise_level)
    assert x_coef.shape == v_coef.shape == std.shape == patterns.shape
    assert x_coef.dtype == v_coef.dtype == std.dtype == torch.float32
    # SDE entries equal the per-sample coefficients the learner computes (tensor level [B, 1, 1]) bit for bit
    t = times[:-1].view(-1, 1, 1)
    level = torch.full((num_steps, 1, 1), noise_level)
    sde = [c.flatten() for c in flow_sde_coefficients(t, dt=dt, noise_level=level)]
    for table, per_sample in zip((x_coef, v_coef, std), sde, strict=True):
        for r, k in patterns.nonzero().tolist():
            assert torch.equal(table[r, k], per_sample[k]), (r, k)
    # ODE entries are exactly (1, -dt, 0), so the linear step is bit for bit the Euler step x - dt * v
    ode = ~patterns
    assert (x_coef[ode] == 1).all() and (v_coef[ode] == torch.tensor(-dt)).all() and (std[ode] == 0).all()
    x, v = torch.randn(2, 64, generator=g), torch.randn(2, 64, generator=g) * 10
    for r, k in ode.nonzero().tolist():
        assert torch.equal(x_coef[r, k] * x + v_coef[r, k] * v, x - dt * v)
    if noise_level > 0:
        assert (std[patterns] > 0).all()
    else:
        assert (std == 0).all() and (x_coef == 1).all() and (v_coef == torch.tensor(-dt)).all()
    with pytest.raises(ValueError, match="steps"):
        flow_sde_coefficient_table(times, patterns[:, :-1] if num_steps > 1 else patterns.repeat(1, 2), noise_level=0.5)


def _linear_chain_inputs(num_steps: int, batch: int, noise_level: float, j: Tensor | None):
    """Per-sample tables (hybrid one-hot(j), or every step when `j` is None) and a seeded chain's inputs."""
    times = time_grid(num_steps)
    patterns = torch.eye(num_steps, dtype=torch.bool) if j is not None else torch.ones(1, num_steps, dtype=torch.bool)
    table = torch.stack(flow_sde_coefficient_table(times, patterns, noise_level=noise_level), dim=1)  # [R, 3, K]
    table = (table[j] if j is not None else table.expand(batch, 3, num_steps))[..., None, None]  # [B, 3, K, 1, 1]
    g = torch.Generator().manual_seed(11)
    noise = torch.randn(batch, 5, 2, generator=g)
    eps = torch.randn(batch, num_steps, 5, 2, generator=g).unbind(1)
    step_times = [times[k].expand(batch) for k in range(num_steps)]
    return table, noise, eps, step_times


@pytest.mark.parametrize("num_steps", [1, 4, 10])
def test_linear_chain_with_zero_noise_is_exactly_lerobot_euler(num_steps):
    table, noise, eps, step_times = _linear_chain_inputs(num_steps, 3, 0.0, torch.zeros(3, dtype=torch.long))
    x_coef, v_coef, std = (c.unbind(1) for c in table.unbind(1))
    chain, means = sample_linear_chain(
        _nonlinear_velocity, noise, step_times=step_times, x_coef=x_coef, v_coef=v_coef, std=std, eps=eps
    )
    assert chain.shape == (3, num_steps + 1, 5, 2) and means.shape == (3, num_steps, 5, 2)
    assert torch.equal(chain[:, 0], noise)
    assert torch.equal(chain[:, -1], euler_integrate(_nonlinear_velocity, noise, num_steps))
    assert torch.equal(chain[:, 1:], means)


@pytest.mark.parametrize("hybrid", [True, False], ids=["hybrid", "all"])
def test_linear_chain_steps_and_log_probs_equal_scoring_each_transition(hybrid):
    """Every sampled step is mean + std * eps with the step function's mean; the vectorized log-probs equal
    `gaussian_log_prob` and the learner's `score_transition` bit for bit (exactly 0 on ODE steps)."""
    num_steps, batch, level = 4, 6, 0.5
    j = torch.tensor([0, 1, 2, 3, 1, 0]) if hybrid else None
    table, noise, eps, step_times = _linear_chain_inputs(num_steps, batch, level, j)
    if hybrid:  # one draw serves every step
        eps = (eps[0],) * num_steps
    x_coef, v_coef, std = (c.unbind(1) for c in table.unbind(1))
    chain, means = sample_linear_chain(
        _nonlinear_velocity, noise, step_times=step_times, x_coef=x_coef, v_coef=v_coef, std=std, eps=eps
    )
    stds = table[:, 2]  # [B, K, 1, 1]
    safe_std, log_normalizer = gaussian_scale_terms(stds)
    step_lp = linear_chain_log_probs(chain, means, safe_std=safe_std, log_normalizer=log_normalizer)
    assert step_lp.shape == (batch, num_steps, 5, 2) and step_lp.dtype == torch.float32
    assert torch.equal(step_lp, gaussian_log_prob(chain[:, 1:], means, stds))
    stochastic = (stds > 0).view(batch, num_steps)
    assert stochastic.sum(1).tolist() == ([1] * batch if hybrid else [num_steps] * batch)
    assert (step_lp[~stochastic] == 0).all() and (step_lp[stochastic] != 0).all()
    if hybrid:  # the one-step scorer reads the SDE step's deviation off the sum over steps, bit for bit
        rows = torch.arange(batch)
        at_j = {"safe_std": safe_std[rows, j], "log_normalizer": log_normalizer[rows, j]}  # [B, 1, 1]
        one_step = one_step_chain_log_prob(chain, means, **at_j)
        assert one_step.shape == (batch, 5, 2)
        assert torch.equal(one_step, step_lp[rows, j]) and torch.equal(one_step, step_lp.sum(1))
        assert torch.equal(one_step, gaussian_log_prob(chain[rows, j + 1], means[rows, j], stds[rows, j]))

    def step(x, t, on):  # the learner's step function: per-sample coefficients from flow_sde_coefficients
        v, per_sample_level = _nonlinear_velocity(x, t), torch.full((x.shape[0], 1, 1), level)
        return flow_sde_step(x, v, t.view(-1, 1, 1), dt=1 / num_steps, noise_level=per_sample_level)

    for k in range(num_steps):
        rows = stochastic[:, k]
        if not rows.any():
            continue
        tr = score_transition(step, chain[rows, k], chain[rows, k + 1], step_times[k][rows], rows[rows])
        assert torch.equal(tr.log_prob, step_lp[rows, k]), k
        mean, _ = step(chain[rows, k], step_times[k][rows], rows[rows])
        assert torch.equal(mean, means[rows, k])
        assert torch.allclose(chain[rows, k + 1], mean + stds[rows, k] * eps[k][rows], atol=1e-6)
        # ODE rows of this step are exact Euler steps
        ode = ~rows
        x = chain[ode, k]
        assert torch.equal(chain[ode, k + 1], x - (1 / num_steps) * _nonlinear_velocity(x, step_times[k][ode]))


# Target a ~ N(mu, s²) per dimension, ε ~ N(0, 1), x_t = t·ε + (1 − t)·a. x_t is Gaussian with mean (1 − t)·mu and
# variance t² + (1 − t)²s², and the exact flow-matching velocity E[ε − a | x_t = x] is affine in x:
#     v(x, t) = −mu + (t − (1 − t)s²) · (x − (1 − t)mu) / (t² + (1 − t)²s²)
MU = torch.tensor([1.5, -0.5])
S = torch.tensor([0.5, 2.0])


def _gaussian_target_velocity(x: Tensor, t: Tensor) -> Tensor:
    var_t = t.square() + (1 - t).square() * S.square()
    return -MU + (t - (1 - t) * S.square()) * (x - (1 - t) * MU) / var_t


def _marginal(t: Tensor) -> tuple[Tensor, Tensor]:
    return (1 - t) * MU, torch.sqrt(t.square() + (1 - t).square() * S.square())


def _sde_step_fn(num_steps: int, noise_level: float, *, drop_correction: bool = False):
    dt = 1.0 / num_steps

    def step(x, t, stochastic):
        t = t.view(-1, 1, 1)
        v = _gaussian_target_velocity(x, t)
        mean, std = flow_sde_step(x, v, t, dt=dt, noise_level=noise_level)
        if drop_correction:  # the mis-specified drift: Euler mean with the SDE's noise
            mean = x - dt * v
        return mean, std

    return step


def _exact_chain_moments(step_fn, num_steps: int) -> tuple[Tensor, Tensor]:
    """Exact per-time mean and std `[K+1, D]` of the *discretized* chain from x_{t_0} ~ N(0, I).

    The velocity is affine in x, so every transition is x' = α·x + β + std·ξ with α, β read off the step function
    at x = 0 and x = 1; the moments then propagate exactly: m' = α·m + β, var' = α²·var + std².
    """
    times = time_grid(num_steps)
    mean, var = torch.zeros(2), torch.ones(2)
    means, stds = [mean], [var.sqrt()]
    probe = torch.stack([torch.zeros(2), torch.ones(2)]).view(2, 1, 2)
    for k in range(num_steps):
        step_mean, step_std = step_fn(probe, times[k].expand(2), torch.ones(2, dtype=torch.bool))
        alpha, beta = step_mean[1, 0] - step_mean[0, 0], step_mean[0, 0]
        mean, var = alpha * mean + beta, alpha.square() * var + step_std[0, 0].square()
        means.append(mean)
        stds.append(var.sqrt())
    return torch.stack(means), torch.stack(stds)


def test_flow_sde_discretized_marginals_converge_to_the_ode_marginals():
    times = time_grid(64)
    target_mean, target_std = _marginal(times.view(-1, 1))
    mean, std = _exact_chain_moments(_sde_step_fn(64, 0.5), 64)
    torch.testing.assert_close(mean, target_mean, atol=1e-5, rtol=0)  # the mean is preserved exactly
    assert ((std - target_std) / target_std).abs().max() < 0.025  # O(dt) discretization error
    assert ((std[-1] - S) / S).abs().max() < 0.01
    # finer steps get closer at t = 0
    _, std_128 = _exact_chain_moments(_sde_step_fn(128, 0.5), 128)
    assert ((std_128[-1] - S) / S).abs().max() < ((std[-1] - S) / S).abs().max()
    # dropping the score correction inflates the variance far beyond discretization error
    _, wrong = _exact_chain_moments(_sde_step_fn(64, 0.5, drop_correction=True), 64)
    assert ((wrong[-1] - S) / S).min() > 0.3


def _sampled_marginals_match(chain: Tensor, num_steps: int, *, z: float = 5.0) -> bool:
    """Do sample mean/std at every grid time match the target marginal within z standard errors, plus the exact
    O(dt) bias of the correctly discretized chain (which is deterministic and computed, not guessed)?"""
    times = time_grid(num_steps)
    target_mean, target_std = _marginal(times.view(-1, 1))
    disc_mean, disc_std = _exact_chain_moments(_sde_step_fn(num_steps, 0.5), num_steps)
    samples = chain[:, :, 0, :]  # [M, K+1, D]
    m = samples.shape[0]
    sample_mean, sample_std = samples.mean(0), samples.std(0)
    tol_mean = z * target_std / math.sqrt(m) + (disc_mean - target_mean).abs()
    tol_std = z * target_std / math.sqrt(2 * (m - 1)) + (disc_std - target_std).abs()
    return bool(((sample_mean - target_mean).abs() <= tol_mean).all() and ((sample_std - target_std).abs() <= tol_std).all())


def test_flow_sde_sampled_marginals_match_the_target_distribution():
    num_steps, num_samples = 32, 8192
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(num_samples, 1, 2, generator=g)
    stochastic = torch.ones(num_samples, num_steps, dtype=torch.bool)
    chain, _, stds = sample_chain(
        _sde_step_fn(num_steps, 0.5), noise, times=time_grid(num_steps), stochastic=stochastic, generator=g
    )
    assert stds.min() > 0  # the chain really was stochastic at every step
    assert _sampled_marginals_match(chain, num_steps)
    # Power: the same check rejects the chain without the drift correction.
    g = torch.Generator().manual_seed(0)
    wrong, _, _ = sample_chain(
        _sde_step_fn(num_steps, 0.5, drop_correction=True),
        torch.randn(num_samples, 1, 2, generator=g),
        times=time_grid(num_steps),
        stochastic=stochastic,
        generator=g,
    )
    assert not _sampled_marginals_match(wrong, num_steps)


# ------------------------------------------------------------------------------------------------------------------
# Flow-Noise
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bounds", [(0.08, 0.16), (1e-3, 2.0), (0.3, 0.31), (0.05, 0.5), (0.1, 0.2), (0.07, 0.9)])
def test_flow_noise_std_within_bounds_for_extreme_inputs(bounds):
    lo, hi = bounds
    raw = torch.tensor([-math.inf, -1e30, -1e4, -50.0, -3.0, 0.0, 3.0, 50.0, 1e4, 1e30, math.inf])
    std = noise_std_from_raw(raw, min_std=lo, max_std=hi)
    assert std.dtype == torch.float32 and torch.isfinite(std).all()
    assert (std >= torch.tensor(lo)).all() and (std <= torch.tensor(hi)).all()
    torch.testing.assert_close(std[0], torch.tensor(lo))
    torch.testing.assert_close(std[-1], torch.tensor(hi))
    # raw = 0 is the geometric mean of the bounds (midpoint in log-variance)
    torch.testing.assert_close(std[5], torch.tensor(math.sqrt(lo * hi)))
    with pytest.raises(ValueError, match="min_std"):
        noise_std_from_raw(raw, min_std=hi, max_std=lo)


def test_flow_noise_gradients_reach_the_noise_head():
    torch.manual_seed(0)
    head = NoiseHead(token_dim=6, action_dim=3, hidden_dims=[8, 4], min_std=0.08, max_std=0.16)
    hidden = torch.randn(2, 5, 6)
    x_t, v = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    mean, std = flow_noise_step(x_t, v, head(hidden), dt=0.25)
    torch.testing.assert_close(mean, x_t - 0.25 * v)
    x_next = mean + std * torch.randn_like(mean)  # a recorded sample (constant below)
    log_prob = gaussian_log_prob(x_next.detach(), mean, std)
    (log_prob.sum() + gaussian_entropy(std).sum()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------------------------------------
# Chain log-probs
# ------------------------------------------------------------------------------------------------------------------


def test_chain_log_prob_sum_and_mean_by_hand():
    g = torch.Generator().manual_seed(2)
    steps = torch.randn(3, 4, 2, 5, generator=g)  # [B, K, H, A]
    x0 = torch.randn(3, 2, 5, generator=g)
    prior = -0.5 * x0.square() - 0.5 * math.log(2 * math.pi)
    per_step_total = steps[:, 0] + steps[:, 1] + steps[:, 2] + steps[:, 3]
    torch.testing.assert_close(chain_log_prob(steps, initial_noise=x0, reduction="sum"), per_step_total + prior)
    torch.testing.assert_close(chain_log_prob(steps, initial_noise=x0, reduction="mean"), (per_step_total + prior) / 5)
    torch.testing.assert_close(chain_log_prob(steps, reduction="sum"), per_step_total)
    torch.testing.assert_close(chain_log_prob(steps, reduction="mean"), per_step_total / 4)
    with pytest.raises(ValueError, match="reduction"):
        chain_log_prob(steps, reduction="avg")


def test_reduce_log_prob_keeps_only_executed_steps_and_real_dims():
    # value of element (b, h, d) = 1000·b + 10·h + d  on a [2, 6, 4] model chunk; C = 3 executed steps, 2 real dims
    b, h, d = torch.meshgrid(torch.arange(2), torch.arange(6), torch.arange(4), indexing="ij")
    elements = (1000 * b + 10 * h + d).float()
    element = reduce_log_prob(elements, n_action_steps=3, action_dim=2, level="element")
    assert element.shape == (2, 3, 2)
    assert element[1].tolist() == [[1000.0, 1001.0], [1010.0, 1011.0], [1020.0, 1021.0]]
    action = reduce_log_prob(elements, n_action_steps=3, action_dim=2, level="action")
    assert action.tolist() == [[1.0, 21.0, 41.0], [2001.0, 2021.0, 2041.0]]
    chunk = reduce_log_prob(elements, n_action_steps=3, action_dim=2, level="chunk")
    assert chunk.tolist() == [63.0, 6063.0]
    with pytest.raises(ValueError, match="level"):
        reduce_log_prob(elements, n_action_steps=3, action_dim=2, level="token")


def test_log_probs_are_float32_for_bf16_inputs():
    x = torch.randn(2, 3, 4).bfloat16()
    std = torch.full((2, 3, 4), 0.1).bfloat16()
    assert gaussian_log_prob(x, x * 0.5, std).dtype == torch.float32
    assert gaussian_entropy(std).dtype == torch.float32
    assert standard_normal_log_prob(x).dtype == torch.float32
    mean, sde_std = flow_sde_step(x, x, torch.tensor(0.5), dt=0.25, noise_level=0.5)
    assert mean.dtype == torch.float32 and sde_std.dtype == torch.float32
    mean, noise_std = flow_noise_step(x, x, std, dt=0.25)
    assert mean.dtype == torch.float32 and noise_std.dtype == torch.float32
    steps = torch.randn(2, 4, 3, 4).bfloat16()
    assert chain_log_prob(steps, initial_noise=x).dtype == torch.float32
    assert reduce_log_prob(steps[:, 0], n_action_steps=2, action_dim=3, level="chunk").dtype == torch.float32

    def bf16_step(x, t, stochastic):  # a backbone running in bf16
        return (x - 0.25 * torch.sin(x)).bfloat16(), torch.full_like(x, 0.1).bfloat16()

    chain, step_lp, stds = sample_chain(bf16_step, x, times=time_grid(4), stochastic=torch.ones(2, 4, dtype=torch.bool))
    assert chain.dtype == step_lp.dtype == torch.float32


# ------------------------------------------------------------------------------------------------------------------
# Sampling and scoring chains
# ------------------------------------------------------------------------------------------------------------------


def _toy_sde_step(weight: Tensor, num_steps: int, noise_level: float):
    dt = 1.0 / num_steps

    def step(x, t, stochastic):
        t = t.view(-1, 1, 1)
        v = torch.tanh(x @ weight) + t
        mean_s, std_s = flow_sde_step(x, v, t, dt=dt, noise_level=noise_level)
        on = stochastic.view(-1, 1, 1)
        return torch.where(on, mean_s, x - dt * v), torch.where(on, std_s, torch.zeros_like(std_s))

    return step


def test_sample_chain_is_reproducible_with_a_generator():
    weight = torch.randn(3, 3)
    step = _toy_sde_step(weight, 4, 0.5)
    noise = torch.randn(5, 2, 3)
    stochastic = torch.ones(5, 4, dtype=torch.bool)
    first = sample_chain(step, noise, times=time_grid(4), stochastic=stochastic, generator=torch.Generator().manual_seed(7))
    second = sample_chain(step, noise, times=time_grid(4), stochastic=stochastic, generator=torch.Generator().manual_seed(7))
    other = sample_chain(step, noise, times=time_grid(4), stochastic=stochastic, generator=torch.Generator().manual_seed(8))
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(first[0], other[0])
    with pytest.raises(ValueError, match="stochastic has shape"):
        sample_chain(step, noise, times=time_grid(4), stochastic=torch.ones(5, 3, dtype=torch.bool))


def test_sampled_step_log_probs_equal_scoring_the_recorded_chain():
    num_steps, batch = 4, 6
    weight = torch.randn(3, 3, generator=torch.Generator().manual_seed(3))
    # hybrid: one stochastic step per sample (j = 0..K−1), the rest ODE steps
    j = torch.tensor([0, 1, 2, 3, 1, 0])
    stochastic = torch.nn.functional.one_hot(j, num_steps).bool()
    step = _toy_sde_step(weight, num_steps, 0.5)
    times = time_grid(num_steps)
    noise = torch.randn(batch, 2, 3, generator=torch.Generator().manual_seed(4))
    chain, step_lp, stds = sample_chain(
        step, noise, times=times, stochastic=stochastic, generator=torch.Generator().manual_seed(5)
    )
    assert torch.all(step_lp[~stochastic] == 0) and torch.all(stds[~stochastic] == 0)
    assert torch.all(stds[stochastic] > 0)
    # score_transition on the recorded (x_j, x_{j+1}), with gradients through the step function's parameters
    weight_g = weight.clone().requires_grad_(True)
    rows = torch.arange(batch)
    tr = score_transition(
        _toy_sde_step(weight_g, num_steps, 0.5), chain[rows, j], chain[rows, j + 1], times[j], torch.ones(batch, dtype=torch.bool)
    )
    torch.testing.assert_close(tr.log_prob, step_lp[rows, j], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tr.std, stds[rows, j])
    tr.log_prob.sum().backward()
    assert weight_g.grad is not None and weight_g.grad.abs().sum() > 0
    # chain_step_log_probs scores every step of the recorded chain identically
    scored = chain_step_log_probs(step, chain, times=times, stochastic=stochastic)
    torch.testing.assert_close(scored.log_prob, step_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(scored.std, stds)
    # a chain that was not sampled by this step function scores differently (the comparison has teeth)
    perturbed = chain.clone()
    perturbed[:, 1:] += 0.05
    assert not torch.allclose(chain_step_log_probs(step, perturbed, times=times, stochastic=stochastic).log_prob, step_lp)
