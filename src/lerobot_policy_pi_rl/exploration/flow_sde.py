"""Flow-SDE exploration: the flow ODE turned into an SDE with the same marginals (step math: `flow.flow_sde`).

`hybrid` chains take one uniformly drawn SDE step per decision, every other step an ODE step, and are scored at
that step only (one action-head pass with gradients); `all` chains are stochastic at every step. The noise level
`a` can be annealed linearly over the policy updates.

Sampling is the actor's hot path. Every Flow-SDE chain is linear in (x, v) with coefficients that depend only on
(t, a) and the chain's pattern of SDE steps, so they are tabulated once per (level, batch, device) and a step
costs one velocity pass and four elementwise ops, with no branching. Scoring calls `flow_sde_step` per sample,
the same arithmetic the table was built with, so a fresh chain re-scores to its sampled log-prob bit for bit.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ..configuration_pi_rl import FlowSDEConfig
from ..flow import (
    chain_log_prob,
    chain_step_log_probs,
    flow_sde_coefficient_table,
    flow_sde_step,
    gaussian_scale_terms,
    linear_chain_log_probs,
    one_step_chain_log_prob,
    sample_linear_chain,
    score_transition,
)
from ..flow.chain import StepFn
from .base import Exploration, SampledChain, ScoredChain, VelocityFeaturesFn
from .record import ChainRecord

# Tables kept per policy: levels anneal, so old ones are dropped beyond this many.
_MAX_TABLES = 8


class FlowSDESteps(NamedTuple):
    """The K transitions of a batch of chains as `sample_linear_chain` and the log-prob read them: step k is
    mean_k = x_coef[k] * x_k + v_coef[k] * v(x_k, t_k), x_{k+1} = mean_k + std[k] * eps_k."""

    #: K tensors each, `[B, 1, 1]` (one row per sample) or `[1, 1, 1]` (one pattern for the whole batch).
    x_coef: tuple[Tensor, ...]
    v_coef: tuple[Tensor, ...]
    std: tuple[Tensor, ...]
    #: `gaussian_scale_terms` of the scored steps' std, shaped for the log-prob: hybrid `[B, 1, 1]` (each sample's
    #: one SDE step, against its deviation `[B, H, A]`), all `[1, K, 1, 1]` (against `[B, K, H, A]`).
    safe_std: Tensor
    log_normalizer: Tensor


class _StepTable:
    """`FlowSDESteps` of every chain pattern, for one noise level, batch size and device.

    Packed as `[R, 3K + 2S, 1, 1]`, one row per pattern (hybrid: row j has its SDE step at j, S = 1; all: R = 1,
    S = K), so that the rows of a batch are a single gather: the K x_coef, K v_coef and K std columns, then the S
    safe_std and S log_normalizer columns. Built from the level's value, never a view of the policy's buffer.
    """

    def __init__(self, times: Tensor, *, hybrid: bool, noise_level: float, batch_size: int):
        k = self.num_steps = times.shape[0] - 1
        self.hybrid = hybrid
        patterns = torch.eye(k, dtype=torch.bool) if hybrid else torch.ones(1, k, dtype=torch.bool)
        #: `[R, K]` bool: which steps of each pattern are SDE steps (the chains' `ChainRecord.stochastic` rows).
        self.patterns = patterns.to(times.device)
        coefficients = flow_sde_coefficient_table(times, patterns, noise_level=noise_level)  # each [R, K]
        safe_std, log_normalizer = gaussian_scale_terms(coefficients.std)
        if hybrid:  # row j is scored at its SDE step j only
            safe_std, log_normalizer = safe_std.diagonal()[:, None], log_normalizer.diagonal()[:, None]
        self.packed = torch.cat([*coefficients, safe_std, log_normalizer], dim=1)[..., None, None]
        #: t_k `[B]` per step (views of one grid).
        self.step_times = tuple(t.expand(batch_size) for t in times[:-1].unbind(0))
        #: The level every chain of the batch records, `[B]` (read-only).
        self.levels = torch.full((batch_size,), noise_level, dtype=torch.float32, device=times.device)

    def steps(self, rows: Tensor | None) -> FlowSDESteps:
        """The steps of a batch: pattern `rows[b]` for sample b (`[B]` long), or the only pattern (None)."""
        packed = self.packed if rows is None else self.packed[rows]
        columns = packed.unbind(1)
        k = self.num_steps
        if self.hybrid:
            safe_std, log_normalizer = columns[3 * k], columns[3 * k + 1]
        else:
            safe_std, log_normalizer = packed[:, 3 * k : 4 * k], packed[:, 4 * k :]
        return FlowSDESteps(columns[:k], columns[k : 2 * k], columns[2 * k : 3 * k], safe_std, log_normalizer)


class FlowSDE(Exploration):
    """Flow-SDE with a fixed or linearly annealed noise level `a` (`FlowSDEConfig`)."""

    def __init__(self, config: FlowSDEConfig, *, num_steps: int):
        super().__init__(num_steps=num_steps)
        config.check_num_denoise_steps(num_steps)
        self.config = config
        self.hybrid = config.stochastic_steps == "hybrid"
        # Hybrid SDE steps are drawn from 0..K-1, or 0..K-2 without the nearly deterministic last step.
        self._num_choices = num_steps - 1 if config.exclude_last_step else num_steps
        self._tables: dict[tuple, _StepTable] = {}

    def noise_level_at(self, update: int) -> float:
        """`noise_level`, moving linearly to `noise_level_final` over `noise_anneal_updates` updates, then held."""
        cfg = self.config
        if cfg.noise_level_final is None or cfg.noise_anneal_updates <= 0:
            return cfg.noise_level
        frac = min(max(update, 0) / cfg.noise_anneal_updates, 1.0)
        return cfg.noise_level + frac * (cfg.noise_level_final - cfg.noise_level)

    def sample(
        self,
        velocity_fn: VelocityFeaturesFn,
        noise: Tensor,
        *,
        noise_level: float,
        generator: torch.Generator | None = None,
    ) -> SampledChain:
        k = self.num_steps
        bsize, device = noise.shape[0], noise.device
        table = self._table(noise_level, bsize, device)
        if self.hybrid:
            step_index = torch.randint(0, self._num_choices, (bsize,), generator=generator, device="cpu")
            if device.type != "cpu":
                step_index = step_index.to(device)
            steps = table.steps(step_index)
            # One draw serves every step: each sample has a non-zero std at its step j only.
            eps = (torch.randn(noise.shape, generator=generator, device=device, dtype=torch.float32),) * k
        else:
            steps = table.steps(None)
            eps = torch.randn((bsize, k, *noise.shape[1:]), generator=generator, device=device).unbind(1)
        chain, means = sample_linear_chain(
            lambda x, t: velocity_fn(x, t)[0],
            noise,
            step_times=table.step_times,
            x_coef=steps.x_coef,
            v_coef=steps.v_coef,
            std=steps.std,
            eps=eps,
        )
        # ODE steps have x_{k+1} == mean_k exactly and contribute exactly 0: no gather, no masking.
        safe_std, log_normalizer = steps.safe_std, steps.log_normalizer
        if self.hybrid:
            element_log_prob = one_step_chain_log_prob(chain, means, safe_std=safe_std, log_normalizer=log_normalizer)
            stochastic = table.patterns[step_index]
        else:
            step_log_probs = linear_chain_log_probs(chain, means, safe_std=safe_std, log_normalizer=log_normalizer)
            element_log_prob = chain_log_prob(step_log_probs, reduction="sum")
            stochastic = table.patterns.expand(bsize, k)
        return SampledChain(ChainRecord(chain, stochastic, table.levels), element_log_prob)

    def score(self, velocity_fn: VelocityFeaturesFn, record: ChainRecord) -> ScoredChain:
        chain = record.chain.float()
        device = chain.device
        stochastic = record.stochastic.to(device)
        step = self._step_fn(velocity_fn, record.noise_level.float().to(device))
        times = self._grid(device)
        if not self.hybrid:
            scored = chain_step_log_probs(step, chain, times=times, stochastic=stochastic)
            return ScoredChain(chain_log_prob(scored.log_prob, reduction="sum"), scored.std)
        counts = stochastic.sum(dim=1)
        if bool((counts != 1).any()):
            raise ValueError(f"hybrid Flow-SDE chains have one stochastic step each; got counts {counts.tolist()}")
        j = stochastic.float().argmax(dim=1)
        rows = torch.arange(len(chain), device=device)
        scored = score_transition(step, chain[rows, j], chain[rows, j + 1], times[j], stochastic[rows, j])
        return ScoredChain(scored.log_prob, scored.std.unsqueeze(1))

    def _step_fn(self, velocity_fn: VelocityFeaturesFn, noise_level: Tensor) -> StepFn:
        """`flow_sde_step` at each sample's recorded level `noise_level [B]`, and at a = 0 on its ODE steps: that
        is exactly the Euler step with std 0, so no masking is needed."""
        dt = self.dt

        def step(x: Tensor, t: Tensor, stochastic: Tensor) -> tuple[Tensor, Tensor]:
            v, _ = velocity_fn(x, t)
            level = (noise_level * stochastic).view(-1, 1, 1)
            return flow_sde_step(x, v, t.view(-1, 1, 1), dt=dt, noise_level=level)

        return step

    def _table(self, noise_level: float, bsize: int, device: torch.device) -> _StepTable:
        key = (noise_level, bsize, device)
        table = self._tables.get(key)
        if table is None:
            table = _StepTable(self._grid(device), hybrid=self.hybrid, noise_level=noise_level, batch_size=bsize)
            if len(self._tables) >= _MAX_TABLES:
                self._tables.clear()
            self._tables[key] = table
        return table
