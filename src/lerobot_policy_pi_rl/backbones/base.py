"""The contract between the `pi_rl` policy and a flow-matching network ("backbone").

The policy only ever calls these methods; it never reaches into backbone internals. Time convention: t = 1 is
noise, t = 0 is the action. Actions are in the backbone's normalized, possibly padded space `[B, H, A_model]`.
"""

from __future__ import annotations

import abc
from typing import Any

from torch import Tensor, nn


class FlowBackbone(nn.Module, abc.ABC):
    """A velocity field v_theta(x_t, t, o) with a once-per-decision observation encoding."""

    #: Action dimension of the model's flow space (VLAs pad, e.g. 32); real dims are the first `action_dim`.
    model_action_dim: int
    #: Horizon H of a predicted chunk.
    chunk_size: int
    #: Width of the per-horizon-step hidden features returned by `velocity` (read by the Flow-Noise head).
    token_dim: int
    #: Width of `value_features`.
    value_feature_dim: int

    @abc.abstractmethod
    def encode(self, batch: dict[str, Tensor]) -> Any:
        """Encode the observation once per decision (VLAs: embed the prefix and fill the KV cache).

        `batch` is the preprocessed observation batch. The result is opaque to the policy and is passed back to
        `velocity` and `value_features`; it must stay valid for any number of `velocity` calls.
        """

    @abc.abstractmethod
    def velocity(self, context: Any, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """One action-head pass: `x_t [B, H, A_model]`, `t [B]` float32 -> (`v [B, H, A_model]` float32,
        `hidden [B, H, token_dim]`). Gradients flow when enabled."""

    @abc.abstractmethod
    def value_features(self, context: Any) -> Tensor:
        """Chain-independent critic features `[B, value_feature_dim]` for the encoded observation."""

    @abc.abstractmethod
    def flow_matching_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Supervised flow-matching loss on a batch that carries `action` chunks (the backbone's own loss)."""

    def batch_size(self, context: Any) -> int:
        return int(self.value_features(context).shape[0])

    def rl_trainable_parameters(self) -> list[nn.Parameter]:
        """Backbone parameters PI-RL updates (VLAs: the action expert; the VLM stays frozen by default)."""
        return [p for p in self.parameters() if p.requires_grad]
