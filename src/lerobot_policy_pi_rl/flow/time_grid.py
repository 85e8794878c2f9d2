"""The denoising time grid t_k = 1 - k/K, k = 0..K (t = 1 noise, t = 0 action)."""

from __future__ import annotations

import torch
from torch import Tensor


def time_grid(num_steps: int, *, device: torch.device | str | None = None) -> Tensor:
    """Return the K+1 grid times `[1, 1 - 1/K, ..., 0]` as float32, shape `[K+1]`.

    The values equal the ones LeRobot's `euler_integrate` uses (`1.0 + k * (-1/K)` in float64, then float32).
    """
    if num_steps < 1:
        raise ValueError(f"num_steps={num_steps} must be >= 1")
    dt = -1.0 / num_steps
    return torch.tensor([1.0 + k * dt for k in range(num_steps)] + [0.0], dtype=torch.float32, device=device)
