"""`flow_mlp`: a small flow-matching policy over state vectors (and optionally small images).

CPU-sized, trainable from scratch, with the same structure as the VLAs it stands in for: an observation encoding
computed once per decision, and an action head that maps (x_t, t, encoding) to per-horizon-step token features
and, through a linear output projection, to the velocity. Time convention: t = 1 noise, t = 0 action.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import Tensor, nn

from lerobot.policies.common.flow_matching import sample_noise, sample_time_beta
from lerobot.utils.constants import ACTION

from ..configuration_pi_rl import FlowMLPBackboneConfig, PiRLConfig
from .base import FlowBackbone


def sinusoidal_time_embedding(t: Tensor, dim: int) -> Tensor:
    """`t [B]` in [0, 1] -> `[B, dim]` sin/cos features over log-spaced periods."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0.0, math.log(1000.0), half, device=t.device, dtype=torch.float32))
    angles = t.float()[:, None] * freqs[None, :] * math.pi
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    return F.pad(emb, (0, dim - emb.shape[-1]))


class SmallImageEncoder(nn.Module):
    """Strided conv encoder for small images in [0, 1], `[B, 3, h, w]` -> `[B, out_dim]`."""

    def __init__(self, channels: list[int], out_dim: int):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for ch in channels:
            layers += [nn.Conv2d(in_ch, ch, kernel_size=3, stride=2, padding=1), nn.SiLU()]
            in_ch = ch
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(in_ch, out_dim)

    def forward(self, image: Tensor) -> Tensor:
        features = self.conv(image.float() * 2.0 - 1.0)
        return self.proj(features.mean(dim=(2, 3)))


class FlowMLPBackbone(FlowBackbone):
    def __init__(self, config: PiRLConfig):
        super().__init__()
        cfg: FlowMLPBackboneConfig = config.backbone  # type: ignore[assignment]
        self.state_keys = config.state_feature_keys
        self.image_keys = config.image_feature_keys
        self.chunk_size = config.chunk_size
        self.model_action_dim = config.action_dim
        self.token_dim = cfg.token_dim
        self.time_embed_dim = cfg.time_embed_dim
        inputs = config.input_features or {}
        state_dim = sum(int(math.prod(inputs[k].shape)) for k in self.state_keys)
        if state_dim == 0 and not self.image_keys:
            raise ValueError("flow_mlp needs state or image inputs; config.input_features has none")

        encoder_in = state_dim + cfg.hidden_dim * len(self.image_keys)
        self.image_encoder = SmallImageEncoder(cfg.image_channels, cfg.hidden_dim) if self.image_keys else None
        self.obs_encoder = nn.Sequential(
            nn.Linear(encoder_in, cfg.hidden_dim), nn.SiLU(), nn.Linear(cfg.hidden_dim, cfg.hidden_dim), nn.SiLU()
        )
        self.value_feature_dim = cfg.hidden_dim

        flat_action = self.chunk_size * self.model_action_dim
        layers: list[nn.Module] = []
        in_dim = cfg.hidden_dim + flat_action + cfg.time_embed_dim
        for _ in range(cfg.num_layers):
            layers += [nn.Linear(in_dim, cfg.hidden_dim), nn.SiLU()]
            in_dim = cfg.hidden_dim
        self.action_mlp = nn.Sequential(*layers)
        self.to_tokens = nn.Linear(cfg.hidden_dim, self.chunk_size * cfg.token_dim)
        self.action_out_proj = nn.Linear(cfg.token_dim, self.model_action_dim)

    def encode(self, batch: dict[str, Tensor]) -> Tensor:
        parts = [batch[k].float().flatten(start_dim=1) for k in self.state_keys]
        if self.image_encoder is not None:
            parts += [self.image_encoder(batch[k]) for k in self.image_keys]
        return self.obs_encoder(torch.cat(parts, dim=-1))

    def velocity(self, context: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        batch = x_t.shape[0]
        if context.shape[0] != batch:
            raise ValueError(f"context batch {context.shape[0]} != x_t batch {batch}")
        h = torch.cat(
            [context, x_t.float().flatten(start_dim=1), sinusoidal_time_embedding(t, self.time_embed_dim)], dim=-1
        )
        h = self.action_mlp(h)
        tokens = F.silu(self.to_tokens(h)).view(batch, self.chunk_size, self.token_dim)  # [B, H, W]
        return self.action_out_proj(tokens).float(), tokens

    def value_features(self, context: Tensor) -> Tensor:
        return context

    def flow_matching_loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        actions = batch[ACTION].float()  # [B, H, A], normalized
        if actions.dim() == 2:
            actions = actions.unsqueeze(1)
        if actions.shape[1] != self.chunk_size:
            raise ValueError(
                f"action chunk has {actions.shape[1]} steps, expected chunk_size={self.chunk_size} "
                "(is the dataset's action_delta_indices honoured?)"
            )
        bsize = actions.shape[0]
        noise = sample_noise(actions.shape, actions.device)
        # openpi's Beta(1.5, 1) timestep distribution, weighted towards the noisy end.
        time = sample_time_beta(bsize, actions.device, alpha=1.5, beta=1.0, scale=0.999, offset=0.001)
        t = time[:, None, None]
        x_t = t * noise + (1.0 - t) * actions
        target = noise - actions
        v, _ = self.velocity(self.encode(batch), x_t, time)
        losses = F.mse_loss(v, target, reduction="none")  # [B, H, A]
        pad = batch.get(f"{ACTION}_is_pad")
        if pad is not None:
            valid = (~pad.bool()).unsqueeze(-1).float()
            loss = (losses * valid).sum() / (valid.sum() * losses.shape[-1]).clamp_min(1.0)
        else:
            loss = losses.mean()
        return loss, {"flow_mse": float(loss.detach())}
