"""Diagonal Gaussian log-density and entropy, float32, with exact zeros for deterministic (std = 0) elements."""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """Elementwise log N(x; mean, std^2) in float32.

    Shapes broadcast; the result has the broadcast shape. Where `std == 0` (an ODE step) the element
    contributes exactly 0 and no gradient: it is never divided by. Gradients flow to `mean` and `std`.
    """
    x, mean, std = x.float(), mean.float(), std.float()
    deterministic = std == 0
    safe_std = torch.where(deterministic, torch.ones_like(std), std)
    z = (x - mean) / safe_std
    log_prob = -0.5 * z.square() - torch.log(safe_std) - 0.5 * _LOG_2PI
    return torch.where(deterministic, torch.zeros_like(log_prob), log_prob)


def standard_normal_log_prob(x: Tensor) -> Tensor:
    """Elementwise log N(x; 0, 1) in float32 (the prior of the chain's initial noise)."""
    x = x.float()
    return -0.5 * x.square() - 0.5 * _LOG_2PI


def gaussian_entropy(std: Tensor) -> Tensor:
    """Elementwise entropy 0.5 * log(2 pi e std^2) in float32; exactly 0 where `std == 0` (not stochastic)."""
    std = std.float()
    deterministic = std == 0
    safe_std = torch.where(deterministic, torch.ones_like(std), std)
    entropy = 0.5 * (_LOG_2PI + 1.0) + torch.log(safe_std)
    return torch.where(deterministic, torch.zeros_like(entropy), entropy)
