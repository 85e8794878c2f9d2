"""The small heads PI-RL adds to a flow backbone: the Flow-Noise std head and the value head."""

from __future__ import annotations

from torch import Tensor, nn

from .flow.flow_noise import noise_std_from_raw


def _mlp(in_dim: int, hidden_dims: list[int], out_dim: int, activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden_dims:
        layers += [nn.Linear(in_dim, h), activation()]
        in_dim = h
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class NoiseHead(nn.Module):
    """Per-element std of the Flow-Noise transition from the action head's token features `[B, H, W]`."""

    def __init__(self, token_dim: int, action_dim: int, hidden_dims: list[int], *, min_std: float, max_std: float):
        super().__init__()
        self.min_std, self.max_std = min_std, max_std
        self.mlp = _mlp(token_dim, hidden_dims, action_dim, nn.Tanh)

    def reset_parameters(self) -> None:
        """Initialize every layer afresh (PyTorch's default `nn.Linear` initialization, as at construction)."""
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                layer.reset_parameters()

    def forward(self, hidden: Tensor) -> Tensor:
        """`[B, H, W]` -> std `[B, H, A]` in [min_std, max_std], float32."""
        return noise_std_from_raw(self.mlp(hidden.float()), min_std=self.min_std, max_std=self.max_std)


class ValueHead(nn.Module):
    """V(o) from chain-independent observation features `[B, F]` -> `[B]` float32."""

    def __init__(self, feature_dim: int, hidden_dims: list[int]):
        super().__init__()
        self.mlp = _mlp(feature_dim, hidden_dims, 1, nn.ReLU)

    def forward(self, features: Tensor) -> Tensor:
        return self.mlp(features.float()).squeeze(-1)
