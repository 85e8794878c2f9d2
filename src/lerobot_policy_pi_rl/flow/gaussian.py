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
    The density itself is `gaussian_log_prob_of_deviation`, which the chain sampler calls too.
    """
    x, mean, std = x.float(), mean.float(), std.float()
    deterministic = std == 0
    safe_std = std.masked_fill(deterministic, 1.0)
    log_prob = gaussian_log_prob_of_deviation(x - mean, safe_std, _log_normalizer(safe_std))
    return log_prob.masked_fill(deterministic, 0.0)


def gaussian_scale_terms(std: Tensor) -> tuple[Tensor, Tensor]:
    """`(safe_std, log_normalizer)` of `std` (any shape), float32, for `gaussian_log_prob_of_deviation`.

    Elsewhere than `std == 0` they are what `gaussian_log_prob` uses: std and log(std) + log(2 pi) / 2. Where
    `std == 0` they are exactly (1, 0), so an element with x == mean scores exactly 0 without masking: a sampler
    that precomputes them per step (`flow.chain.linear_chain_log_probs`) needs no `where`.
    """
    std = std.float()
    deterministic = std == 0
    safe_std = std.masked_fill(deterministic, 1.0)
    return safe_std, _log_normalizer(safe_std).masked_fill(deterministic, 0.0)


def gaussian_log_prob_of_deviation(deviation: Tensor, safe_std: Tensor, log_normalizer: Tensor) -> Tensor:
    """-(deviation / safe_std)^2 / 2 - log_normalizer, with `deviation = x - mean` (shapes broadcast).

    The one place the Gaussian log-density is computed, without masking or dtype conversion: `gaussian_log_prob`
    (the learner) and the chain sampler (the actor) both call it, so a sampled transition and its re-scoring
    round identically.
    """
    z = deviation / safe_std
    return -0.5 * (z * z) - log_normalizer


def _log_normalizer(safe_std: Tensor) -> Tensor:
    """log(std * sqrt(2 pi)) for std > 0."""
    return torch.log(safe_std) + 0.5 * _LOG_2PI


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
