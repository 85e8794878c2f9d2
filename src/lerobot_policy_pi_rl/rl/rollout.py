"""On-policy rollout storage: named tensors of chunk steps, the unit the PI-RL algorithm consumes.

One row is one RL step = one executed action chunk. Rows of one *stream* (one environment instance of one
actor) appear in time order; GAE runs along each stream. A stream's last row that is not `done` is bootstrapped
from V(next observation).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from ..exploration import ChainRecord


@dataclass
class Rollout:
    #: Observations as the policy consumes them (preprocessed), each `[N, ...]`.
    observations: dict[str, Tensor]
    #: Observation after the chunk, each `[N, ...]` (bootstraps truncated and segment-final rows).
    next_observations: dict[str, Tensor]
    #: Denoising chains `[N, K+1, H, A_model]` float32.
    chain: Tensor
    #: Which denoise transitions were sampled stochastically `[N, K]` bool (see `ChainRecord`).
    stochastic: Tensor
    #: Flow-SDE noise level each chain was sampled with `[N]` (0 for Flow-Noise).
    noise_level: Tensor
    #: Behaviour log-prob at the policy's `log_prob_level`: `[N]`, `[N, C]` or `[N, C, A_env]` float32.
    log_prob: Tensor
    #: Behaviour value V(o) `[N]` float32.
    value: Tensor
    #: Chunk reward (undiscounted sum of the executed env rewards) `[N]` float32.
    reward: Tensor
    #: Episode ended by the task (no bootstrap) `[N]` bool.
    terminated: Tensor
    #: Episode cut by a time limit (bootstrap from V(next observation)) `[N]` bool.
    truncated: Tensor
    #: Policy version that produced the sample `[N]` long.
    policy_version: Tensor
    #: Which (actor, env) stream the row belongs to `[N]` long.
    stream_id: Tensor
    #: A human intervened during the chunk (its actions are not the policy's) `[N]` bool.
    intervention: Tensor
    #: Episode success reached by the end of this chunk `[N]` bool (GRPO scores, reporting).
    success: Tensor
    #: GRPO group (same initial state) `[N]` long; -1 when not grouped.
    group_id: Tensor

    def __post_init__(self) -> None:
        n = self.reward.shape[0]
        for f in fields(self):
            value = getattr(self, f.name)
            tensors = value.values() if isinstance(value, dict) else [value]
            for t in tensors:
                if not isinstance(t, Tensor):
                    raise TypeError(f"Rollout.{f.name} must hold tensors, got {type(t).__name__}")
                if t.shape[0] != n:
                    raise ValueError(f"Rollout.{f.name} has {t.shape[0]} rows, expected {n} (from reward)")

    def __len__(self) -> int:
        return int(self.reward.shape[0])

    def chain_record(self, rows: Tensor) -> ChainRecord:
        """The recorded chains of rows `rows`, as `PiRLPolicy.evaluate_chain` scores them."""
        return ChainRecord(self.chain[rows], self.stochastic[rows], self.noise_level[rows])

    @property
    def done(self) -> Tensor:
        return self.terminated | self.truncated

    def select(self, index: Tensor) -> Rollout:
        """Rows `index` (bool mask or long indices), all fields alike."""
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kwargs[f.name] = {k: v[index] for k, v in value.items()} if isinstance(value, dict) else value[index]
        return Rollout(**kwargs)

    def to(self, device: torch.device | str) -> Rollout:
        kwargs = {}
        for f in fields(self):
            value = getattr(self, f.name)
            kwargs[f.name] = {k: v.to(device) for k, v in value.items()} if isinstance(value, dict) else value.to(device)
        return Rollout(**kwargs)

    @staticmethod
    def concatenate(parts: list[Rollout]) -> Rollout:
        if not parts:
            raise ValueError("cannot concatenate an empty list of rollouts")
        kwargs = {}
        for f in fields(Rollout):
            first = getattr(parts[0], f.name)
            if isinstance(first, dict):
                kwargs[f.name] = {k: torch.cat([getattr(p, f.name)[k] for p in parts]) for k in first}
            else:
                kwargs[f.name] = torch.cat([getattr(p, f.name) for p in parts])
        return Rollout(**kwargs)
