"""Flow-Noise exploration: Euler means plus learned, bounded per-element noise (step math: `flow.flow_noise`).

Every step is stochastic; its std comes from the noise head reading the action head's per-token features of that
step. The chain log-likelihood counts the initial noise's prior and every transition, summed (exact) or averaged
over the K+1 terms (the reference implementation's reduction).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..configuration_pi_rl import FlowNoiseConfig
from ..flow import chain_log_prob, chain_step_log_probs, flow_noise_step, sample_chain
from ..flow.chain import StepFn
from ..heads import NoiseHead
from .base import Exploration, SampledChain, ScoredChain, VelocityFeaturesFn
from .record import ChainRecord


class FlowNoise(Exploration):
    """Flow-Noise with its noise head (`FlowNoiseConfig`)."""

    learns_std = True

    def __init__(self, config: FlowNoiseConfig, *, num_steps: int, token_dim: int, action_dim: int):
        super().__init__(num_steps=num_steps)
        self.config = config
        self.noise_head = NoiseHead(
            token_dim, action_dim, config.noise_head_hidden_dims, min_std=config.min_std, max_std=config.max_std
        )

    def sample(
        self,
        velocity_fn: VelocityFeaturesFn,
        noise: Tensor,
        *,
        noise_level: float,
        generator: torch.Generator | None = None,
    ) -> SampledChain:
        """See `Exploration.sample`. Flow-Noise has no noise level: `noise_level` is unused and chains record 0."""
        bsize, device = noise.shape[0], noise.device
        stochastic = torch.ones(bsize, self.num_steps, dtype=torch.bool, device=device)
        chain, step_log_probs, _ = sample_chain(
            self._step_fn(velocity_fn), noise, times=self._grid(device), stochastic=stochastic, generator=generator
        )
        record = ChainRecord(chain, stochastic, torch.zeros(bsize, device=device))
        return SampledChain(record, self._chain_log_prob(step_log_probs, chain))

    def score(self, velocity_fn: VelocityFeaturesFn, record: ChainRecord) -> ScoredChain:
        chain = record.chain.float()
        stochastic = record.stochastic.to(chain.device)
        scored = chain_step_log_probs(
            self._step_fn(velocity_fn), chain, times=self._grid(chain.device), stochastic=stochastic
        )
        return ScoredChain(self._chain_log_prob(scored.log_prob, chain), scored.std)

    def terms_per_element(self, record: ChainRecord) -> Tensor:
        """`sum`: the K transitions plus the prior on x_{t_0}; `mean` already averages them into one term."""
        if self.config.log_prob_reduction == "mean":
            return torch.ones(len(record), device=record.chain.device)
        return record.stochastic.sum(dim=1).float() + 1.0

    def _chain_log_prob(self, step_log_probs: Tensor, chain: Tensor) -> Tensor:
        return chain_log_prob(
            step_log_probs, initial_noise=chain[:, 0], reduction=self.config.log_prob_reduction
        )

    def _step_fn(self, velocity_fn: VelocityFeaturesFn) -> StepFn:
        """`flow_noise_step` with the head's std, exactly 0 on a sample's ODE steps (none in Flow-Noise's own
        chains; a recorded chain's mask is honoured all the same)."""
        head, dt = self.noise_head, self.dt

        def step(x: Tensor, t: Tensor, stochastic: Tensor) -> tuple[Tensor, Tensor]:
            v, hidden = velocity_fn(x, t)
            return flow_noise_step(x, v, head(hidden) * stochastic.view(-1, 1, 1), dt=dt)

        return step
