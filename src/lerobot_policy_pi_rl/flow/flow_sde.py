"""Flow-SDE: the flow ODE turned into an SDE with the same marginals (piRL / RLinf convention).

sigma_k = a * sqrt(t_k / (1 - t_k)), with the second grid time t_1 substituted in the denominator at t = 1,
so that the first transition's std sqrt(dt) * sigma_0 is exactly `a`.
mean_k = x_t - dt * [v + sigma_k^2 / (2 t) * (x_t + (1 - t) v)],  std_k = sqrt(dt) * sigma_k
(computed as x_coef * x_t + v_coef * v, see `flow_sde_coefficients`).
With a = 0 this is exactly the Euler step x_t - dt * v.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class SDECoefficients(NamedTuple):
    """The SDE transition as `mean = x_coef * x_t + v_coef * v` with std `std`, float32 (shapes as documented
    where returned)."""

    x_coef: Tensor
    v_coef: Tensor
    std: Tensor


def flow_sde_sigma(t: Tensor, *, noise_level: float | Tensor, dt: float) -> Tensor:
    """Diffusion coefficient sigma_t = a * sqrt(t / (1 - t)) for grid times t in (0, 1], float32.

    `t` may have any shape; a tensor `noise_level` broadcasts against it (one level per sample).
    At t = 1 the denominator uses 1 - t_1 = dt (the next grid time).
    """
    t = t.float()
    denom = torch.where(t >= 1.0, torch.full_like(t, dt), 1.0 - t)
    return noise_level * torch.sqrt(t / denom)


def flow_sde_coefficients(t: Tensor, *, dt: float, noise_level: float | Tensor) -> SDECoefficients:
    """The SDE transition as `mean = x_coef * x_t + v_coef * v`, `std`, for times `t` (any shape), float32.

    With c = sigma_t^2 / (2 t):  x_t - dt * [v + c * (x_t + (1 - t) v)] = (1 - dt c) x_t - dt (1 + c (1 - t)) v.
    The coefficients depend only on (t, a), so a sampler can compute them once per step for the whole batch;
    `flow_sde_step` uses the same function, so sampling and scoring round identically. `std` is
    sqrt(dt) * sigma_t = a * sqrt(dt * t / (1 - t)), with the root exactly 1 at t = 1 (first std exactly a).
    """
    t = t.float()
    sigma = flow_sde_sigma(t, noise_level=noise_level, dt=dt)
    c = sigma.square() / (2.0 * t)
    x_coef = 1.0 - dt * c
    v_coef = -dt * (1.0 + c * (1.0 - t))
    first = t >= 1.0
    ratio = torch.where(first, torch.ones_like(t), dt * t / torch.where(first, torch.ones_like(t), 1.0 - t))
    std = noise_level * torch.sqrt(ratio)
    if isinstance(noise_level, Tensor):
        std = torch.where(std == 0, torch.zeros_like(std), std)
    return SDECoefficients(x_coef, v_coef, std)


def flow_sde_step(
    x_t: Tensor, v: Tensor, t: Tensor, *, dt: float, noise_level: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Mean and std of the SDE transition x_t -> x_{t - dt}, in float32.

    Args:
        x_t: current sample, `[B, ...]`.
        v: velocity v_theta(x_t, t), same shape as `x_t` (gradients flow through it).
        t: current time, broadcastable to `x_t` (e.g. `[B, 1, 1]`), with 0 < t <= 1.
        dt: step size 1/K.
        noise_level: `a`, a float or a tensor broadcastable to `x_t`. 0 gives the Euler step and std 0.
    Returns:
        `(mean, std)`, both the shape of `x_t`.
    """
    x_t, v = x_t.float(), v.float()
    if not isinstance(noise_level, Tensor) and noise_level == 0:
        return x_t - dt * v, torch.zeros_like(x_t)
    x_coef, v_coef, std = flow_sde_coefficients(t, dt=dt, noise_level=noise_level)
    mean = x_coef * x_t + v_coef * v
    return mean, std.expand_as(mean)


def flow_sde_coefficient_table(times: Tensor, stochastic: Tensor, *, noise_level: float | Tensor) -> SDECoefficients:
    """Every step's transition `mean = x_coef * x_t + v_coef * v`, `std`, for chains with given SDE steps.

    Args:
        times: grid `[K+1]` (see `time_grid`).
        stochastic: `[R, K]` bool, one row per chain pattern: which steps are SDE steps (hybrid: row j is
            one-hot(j); full SDE: a single row of ones).
        noise_level: `a`, a float or a 0-dim tensor.
    Returns:
        `SDECoefficients` `(x_coef, v_coef, std)`, each `[R, K]` float32: `flow_sde_coefficients(t_k)` where
        `stochastic[r, k]` (bit for bit what a per-sample call with a tensor noise level gives, as the learner
        computes it), and exactly `(1, -dt, 0)` elsewhere, so that `x_coef * x + v_coef * v` is the Euler step
        `x - dt * v` bit for bit (`1 * x == x` and `(-dt) * v == -(dt * v)` in IEEE arithmetic).
    """
    num_steps = times.shape[0] - 1
    dt = 1.0 / num_steps
    t = times[:-1].float()
    if stochastic.shape[-1] != num_steps:
        raise ValueError(f"stochastic has {stochastic.shape[-1]} steps, the grid {num_steps}")
    # A tensor level takes `flow_sde_coefficients`' tensor branch, the one per-sample scoring takes.
    level = torch.as_tensor(noise_level, dtype=torch.float32, device=t.device)
    sde = flow_sde_coefficients(t, dt=dt, noise_level=level)
    ode = (torch.ones_like(t), torch.full_like(t, -dt), torch.zeros_like(t))
    on = stochastic.to(device=t.device, dtype=torch.bool)
    return SDECoefficients(*(torch.where(on, s, o) for s, o in zip(sde, ode, strict=True)))
