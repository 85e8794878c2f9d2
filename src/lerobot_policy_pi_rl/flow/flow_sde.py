"""Flow-SDE: the flow ODE turned into an SDE with the same marginals (piRL / RLinf convention).

sigma_k = a * sqrt(t_k / (1 - t_k)), with the second grid time t_1 substituted in the denominator at t = 1,
so that the first transition's std sqrt(dt) * sigma_0 is exactly `a`.
mean_k = x_t - dt * [v + sigma_k^2 / (2 t) * (x_t + (1 - t) v)],  std_k = sqrt(dt) * sigma_k.
With a = 0 this is exactly the Euler step x_t - dt * v.
"""

from __future__ import annotations

import torch
from torch import Tensor


def flow_sde_sigma(t: Tensor, *, noise_level: float | Tensor, dt: float) -> Tensor:
    """Diffusion coefficient sigma_t = a * sqrt(t / (1 - t)) for grid times t in (0, 1], float32.

    `t` may have any shape; a tensor `noise_level` broadcasts against it (one level per sample).
    At t = 1 the denominator uses 1 - t_1 = dt (the next grid time).
    """
    t = t.float()
    denom = torch.where(t >= 1.0, torch.full_like(t, dt), 1.0 - t)
    return noise_level * torch.sqrt(t / denom)


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
    x_t, v, t = x_t.float(), v.float(), t.float()
    if not isinstance(noise_level, Tensor) and noise_level == 0:
        return x_t - dt * v, torch.zeros_like(x_t)
    sigma = flow_sde_sigma(t, noise_level=noise_level, dt=dt)
    drift = v + sigma.square() / (2.0 * t) * (x_t + (1.0 - t) * v)
    mean = x_t - dt * drift
    # std = sqrt(dt) * sigma = a * sqrt(dt * t / (1 - t)); at t = 1 (where 1 - t_1 = dt) the root is exactly 1,
    # so the first step's std is exactly `a`, not sqrt(dt) * (a / sqrt(dt)) with its float rounding.
    first = t >= 1.0
    ratio = torch.where(first, torch.ones_like(t), dt * t / torch.where(first, torch.ones_like(t), 1.0 - t))
    std = (noise_level * torch.sqrt(ratio)).expand_as(mean)
    if isinstance(noise_level, Tensor):
        # Where a = 0 the step is the exact Euler step (sigma = 0 makes the drift term vanish already).
        std = torch.where(std == 0, torch.zeros_like(std), std)
    return mean, std
