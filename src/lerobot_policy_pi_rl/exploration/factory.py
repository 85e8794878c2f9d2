"""`make_exploration`: the exploration object of a variant config (the one place variants are told apart)."""

from __future__ import annotations

from ..configuration_pi_rl import FlowNoiseConfig, FlowSDEConfig, VariantConfig
from .base import Exploration
from .flow_noise import FlowNoise
from .flow_sde import FlowSDE


def make_exploration(variant: VariantConfig, *, num_steps: int, token_dim: int, action_dim: int) -> Exploration:
    """Build `variant`'s exploration for K = `num_steps` denoise steps over a backbone whose velocity pass returns
    `token_dim`-wide per-token features and `action_dim`-wide (model, possibly padded) actions."""
    if isinstance(variant, FlowSDEConfig):
        return FlowSDE(variant, num_steps=num_steps)
    if isinstance(variant, FlowNoiseConfig):
        return FlowNoise(variant, num_steps=num_steps, token_dim=token_dim, action_dim=action_dim)
    raise TypeError(
        f"no exploration for variant {variant!r}; known: {sorted(VariantConfig.get_known_choices())}"
    )
