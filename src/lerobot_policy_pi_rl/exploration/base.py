"""`Exploration`: the interface every exploration variant implements, and what its methods return.

A variant turns the deterministic denoising ODE into a Gaussian chain x_{t_0} -> ... -> x_{t_K} whose likelihood
PPO can use. It samples a chain given the backbone's velocity and the initial noise (actor side, no grad), scores
a recorded chain under the current weights (learner side, with grad), reports std statistics, says how its noise
level follows the policy updates, and says what the algorithm may ask of it (an entropy bonus only has a gradient
when the std is learned). The policy builds one with `make_exploration` and never asks which variant it has.

Time convention: t = 1 noise, t = 0 action. Chains are float32 in the backbone's normalized (possibly padded)
action space `[.., H, A_model]`; per-element log-probs cover the whole chunk, the policy keeps executed elements.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..flow import gaussian_entropy, time_grid
from .record import ChainRecord

#: `(x_t [B, H, A], t [B]) -> (v [B, H, A] float32, hidden [B, H, W])`: one action-head pass of one decision's
#: backbone: the velocity and the per-token features a noise head reads. Gradients flow when enabled.
VelocityFeaturesFn = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


@dataclass
class SampledChain:
    """A batch of chains sampled by a variant."""

    #: The chain, its stochastic transitions and noise level, as the learner gets them back.
    record: ChainRecord
    #: Chain log-likelihood per element `[B, H, A]` float32 (the variant's reduction over the scored steps).
    element_log_prob: Tensor


@dataclass
class ScoredChain:
    """A batch of recorded chains scored under the current weights (with gradients)."""

    #: Per-element log-likelihood `[B, H, A]` float32, equal bit for bit to the sampler's for unchanged weights.
    element_log_prob: Tensor
    #: Std of the scored transitions `[B, S, H, A]` float32 (S scored steps; exactly 0 where not stochastic).
    std: Tensor


@dataclass
class StdStatistics:
    """Per-sample statistics of the transition std over executed, stochastic elements (0 where none)."""

    #: Mean Gaussian entropy 0.5 * log(2 pi e std^2) `[B]` (differentiable: the entropy bonus).
    entropy: Tensor
    #: Mean std `[B]` (diagnostics, detached).
    std_mean: Tensor


class Exploration(abc.ABC):
    """One exploration variant, configured for K denoise steps.

    Not an `nn.Module`: the policy registers the variant's learned head (`noise_head`, if any) as its own
    submodule, so state-dict keys, `.to()`, optimizers and checkpoints treat it like any other policy weight.
    """

    #: The variant's learned module (Flow-Noise's std head), or None. Registered on the policy as `noise_head`.
    noise_head: nn.Module | None = None
    #: True when the transition std is learned: only then has an entropy bonus a gradient, so only then does
    #: the algorithm add it to the loss.
    learns_std: bool = False

    def __init__(self, *, num_steps: int):
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps} must be >= 1")
        self.num_steps = num_steps
        self.dt = 1.0 / num_steps
        self._grids: dict[torch.device, Tensor] = {}

    def noise_level_at(self, update: int) -> float:
        """The noise level new samples use after `update` policy updates (0 for variants without one)."""
        return 0.0

    @abc.abstractmethod
    def sample(
        self,
        velocity_fn: VelocityFeaturesFn,
        noise: Tensor,
        *,
        noise_level: float,
        generator: torch.Generator | None = None,
    ) -> SampledChain:
        """Sample one chain per row from `noise` (x_{t_0} `[B, H, A]`), without gradients.

        Args:
            velocity_fn: see `VelocityFeaturesFn`.
            noise: the initial noise x_{t_0}.
            noise_level: the policy's current noise level (`noise_level_at`), recorded with the chains.
            generator: optional torch generator for every draw the variant makes.
        """

    @abc.abstractmethod
    def score(self, velocity_fn: VelocityFeaturesFn, record: ChainRecord) -> ScoredChain:
        """Score recorded chains (on the device of `record.chain`) with gradients through `velocity_fn` and the
        variant's own head, at the noise level each chain was sampled with."""

    def terms_per_element(self, record: ChainRecord) -> Tensor:
        """How many Gaussian log-density terms each element's log-prob sums, per row `[B]` float32: the scored
        (stochastic) transitions. The first-minibatch ratio guard compares |log ratio| per term, so that its
        tolerance means the same for one hybrid step and for K+1 Flow-Noise terms."""
        return record.stochastic.sum(dim=1).float()

    def std_statistics(self, std: Tensor, *, n_action_steps: int, action_dim: int) -> StdStatistics:
        """Entropy and std of `score`'s `std [B, S, H, A]` averaged per sample over the executed elements (first
        `n_action_steps` horizon steps, first `action_dim` dims) of the stochastic transitions."""
        executed = std[..., :n_action_steps, :action_dim].float()
        stochastic = (executed > 0).float()
        dims = tuple(range(1, executed.dim()))
        count = stochastic.sum(dim=dims).clamp_min(1.0)

        def mean(values: Tensor) -> Tensor:
            return (values * stochastic).sum(dim=dims) / count

        return StdStatistics(entropy=mean(gaussian_entropy(executed)), std_mean=mean(executed).detach())

    def _grid(self, device: torch.device) -> Tensor:
        """The time grid `[K+1]` on `device` (built once per device)."""
        grid = self._grids.get(device)
        if grid is None:
            grid = self._grids[device] = time_grid(self.num_steps, device=device)
        return grid
