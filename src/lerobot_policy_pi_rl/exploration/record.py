"""`ChainRecord`: what a sampled denoising chain leaves behind so that the learner can score it again.

One record per decision. The actor gets it from `PiRLPolicy.sample_chain`, ships it to the learner inside the
chunk transition, and the learner hands it back to `PiRLPolicy.evaluate_chain`: the same three tensors from end
to end, whatever the exploration variant.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class ChainRecord:
    """A batch of recorded chains (time convention: t = 1 noise first, t = 0 action last)."""

    #: Denoising chain x_{t_0..t_K} `[B, K+1, H, A_model]` float32, in the backbone's normalized action space.
    chain: Tensor
    #: Which transitions x_{t_k} -> x_{t_{k+1}} were sampled stochastically `[B, K]` bool (hybrid Flow-SDE: one
    #: per row; full Flow-SDE and Flow-Noise: all). Only these transitions enter the log-prob.
    stochastic: Tensor
    #: Flow-SDE noise level `a` each chain was sampled with `[B]` float32 (0 for Flow-Noise, whose std comes
    #: from its noise head).
    noise_level: Tensor

    def __post_init__(self) -> None:
        b = self.chain.shape[0]
        if self.chain.dim() != 4:
            raise ValueError(f"ChainRecord.chain must be [B, K+1, H, A], got {tuple(self.chain.shape)}")
        k = self.chain.shape[1] - 1
        if tuple(self.stochastic.shape) != (b, k) or self.stochastic.dtype != torch.bool:
            raise ValueError(
                f"ChainRecord.stochastic must be a [B={b}, K={k}] bool tensor, got "
                f"{tuple(self.stochastic.shape)} {self.stochastic.dtype}"
            )
        if tuple(self.noise_level.shape) != (b,):
            raise ValueError(f"ChainRecord.noise_level must be [B={b}], got {tuple(self.noise_level.shape)}")

    def __len__(self) -> int:
        return int(self.chain.shape[0])

    def select(self, rows: Tensor) -> ChainRecord:
        """Rows `rows` (long indices or a bool mask)."""
        return ChainRecord(self.chain[rows], self.stochastic[rows], self.noise_level[rows])

    def to(self, device: torch.device | str) -> ChainRecord:
        return ChainRecord(self.chain.to(device), self.stochastic.to(device), self.noise_level.to(device))
