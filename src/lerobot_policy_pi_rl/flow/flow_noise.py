"""Flow-Noise: Euler mean plus learned, bounded per-element Gaussian noise (piRL's noise head).

logvar = l_min + (l_max - l_min) * (tanh(raw) + 1) / 2 with l = log(std_bound^2), std = exp(logvar / 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def noise_std_from_raw(raw: Tensor, *, min_std: float, max_std: float) -> Tensor:
    """Map unbounded noise-head outputs to std in [min_std, max_std], float32, differentiable."""
    if not 0 < min_std < max_std:
        raise ValueError(f"need 0 < min_std < max_std, got min_std={min_std}, max_std={max_std}")
    lo, hi = math.log(min_std**2), math.log(max_std**2)
    logvar = lo + (hi - lo) * (torch.tanh(raw.float()) + 1.0) / 2.0
    # exp(log(b^2) / 2) can round one float32 ulp outside [min_std, max_std] at saturation; the clamp keeps the
    # documented bound exact and leaves gradients inside the interval untouched.
    return torch.exp(logvar / 2.0).clamp(min_std, max_std)


def flow_noise_step(x_t: Tensor, v: Tensor, std: Tensor, *, dt: float) -> tuple[Tensor, Tensor]:
    """Mean and std of the Flow-Noise transition: N(x_t - dt * v, diag(std^2)), float32."""
    x_t, v = x_t.float(), v.float()
    return x_t - dt * v, std.float().expand_as(x_t)
