"""Sampling and scoring a stochastic denoising chain x_{t_0} -> x_{t_1} -> ... -> x_{t_K}.

A *step function* maps `(x_t [B, H, A], t [B], stochastic [B] bool)` to the Gaussian transition
`(mean, std)` of x_{t - dt}, both `[B, H, A]` float32, with `std == 0` for samples whose step is an ODE step.
An exploration variant (`lerobot_policy_pi_rl.exploration`) builds it from the backbone's velocity and its
step function (`flow_sde_step`, `flow_noise_step`); these functions only chain it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .gaussian import gaussian_log_prob, gaussian_log_prob_of_deviation, standard_normal_log_prob

StepFn = Callable[[Tensor, Tensor, Tensor], tuple[Tensor, Tensor]]
#: `(x_t [B, H, A], t [B]) -> v [B, H, A]`, the velocity field of one decision.
VelocityFn = Callable[[Tensor, Tensor], Tensor]


@dataclass
class ChainTransition:
    """Elementwise log-prob and std of scored transitions (float32)."""

    log_prob: Tensor
    std: Tensor


def sample_chain(
    step_fn: StepFn,
    noise: Tensor,
    *,
    times: Tensor,
    stochastic: Tensor,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Integrate the chain from `noise` (t = 1) to t = 0, sampling each stochastic transition.

    Args:
        step_fn: see module docstring.
        noise: x_{t_0}, `[B, H, A]`.
        times: grid `[K+1]` (see `time_grid`).
        stochastic: `[B, K]` bool, which steps of which sample are stochastic.
        generator: optional torch generator for the transition noise.
    Returns:
        `chain [B, K+1, H, A]` float32, `step_log_probs [B, K, H, A]` float32 (0 for ODE steps),
        `step_stds [B, K, H, A]` float32.
    """
    num_steps = times.shape[0] - 1
    batch = noise.shape[0]
    if stochastic.shape != (batch, num_steps):
        raise ValueError(f"stochastic has shape {tuple(stochastic.shape)}, expected {(batch, num_steps)}")
    x = noise.float()
    # All transition noise in one draw; ODE-only steps neither use it nor pay for the Gaussian arithmetic.
    eps = torch.randn((batch, num_steps, *x.shape[1:]), generator=generator, device=x.device, dtype=torch.float32)
    xs, means, stds = [x], [], []
    for k in range(num_steps):
        t = times[k].expand(batch)
        mean, std = step_fn(x, t, stochastic[:, k])
        x = mean + std * eps[:, k] if bool(stochastic[:, k].any()) else mean
        xs.append(x)
        means.append(mean)
        stds.append(std)
    chain = torch.stack(xs, dim=1)
    step_stds = torch.stack(stds, dim=1)
    # Scored exactly as `score_transition` scores a recorded chain, so the learner reproduces it bit for bit.
    log_probs = gaussian_log_prob(chain[:, 1:], torch.stack(means, dim=1), step_stds)
    return chain, log_probs, step_stds


def sample_linear_chain(
    velocity_fn: VelocityFn,
    noise: Tensor,
    *,
    step_times: Sequence[Tensor],
    x_coef: Sequence[Tensor],
    v_coef: Sequence[Tensor],
    std: Sequence[Tensor],
    eps: Sequence[Tensor],
) -> tuple[Tensor, Tensor]:
    """Integrate x_{k+1} = mean_k + std_k * eps_k, mean_k = x_coef_k * x_k + v_coef_k * v(x_k, t_k), from `noise`.

    Every Flow-SDE chain (hybrid or full) is of this form with per-sample coefficient tables
    (`flow_sde_coefficient_table`): no per-step branching, masking or coefficient arithmetic, so a step costs one
    velocity pass and four elementwise ops. Where `(x_coef, v_coef, std) == (1, -dt, 0)` the step is bit for bit
    the Euler step x - dt * v, and wherever `std_k == 0`, x_{k+1} equals mean_k exactly.

    Args:
        velocity_fn: see `VelocityFn`.
        noise: x_{t_0}, `[B, H, A]`.
        step_times: K tensors t_k `[B]`.
        x_coef, v_coef, std: K tensors each, broadcastable to `[B, H, A]` (e.g. `[B, 1, 1]`).
        eps: K standard-normal tensors `[B, H, A]`. One tensor may serve several steps when each sample has a
            non-zero std at one of them at most (hybrid chains).
    Returns:
        `chain [B, K+1, H, A]` float32 (x_{t_0} first) and the transition means `[B, K, H, A]` float32.
    """
    x = noise.float()
    xs, means = [x], []
    for t, xc, vc, s, e in zip(step_times, x_coef, v_coef, std, eps, strict=True):
        mean = xc * x + vc * velocity_fn(x, t)
        x = torch.addcmul(mean, s, e)  # s == 0: exactly `mean` (a fused multiply-add of 0 changes nothing)
        xs.append(x)
        means.append(mean)
    return torch.stack(xs, dim=1), torch.stack(means, dim=1)


def linear_chain_log_probs(chain: Tensor, means: Tensor, *, safe_std: Tensor, log_normalizer: Tensor) -> Tensor:
    """Per-step log-probs `[B, K, H, A]` float32 of a chain from `sample_linear_chain`.

    `safe_std` / `log_normalizer` are `gaussian_scale_terms(std)` of the per-step stds, broadcastable to
    `[B, K, H, A]` (e.g. `[B, K, 1, 1]`). Equal to `gaussian_log_prob(chain[:, 1:], means, std)` bit for bit up
    to the sign of zero, without its masking: at std = 0 steps x_{k+1} == mean_k, so the term is
    -(0 / 1)^2 / 2 - 0 = 0 exactly.
    """
    return gaussian_log_prob_of_deviation(chain[:, 1:] - means, safe_std, log_normalizer)


def one_step_chain_log_prob(chain: Tensor, means: Tensor, *, safe_std: Tensor, log_normalizer: Tensor) -> Tensor:
    """Elementwise log-prob `[B, H, A]` float32 of a `sample_linear_chain` chain with one stochastic step j per
    sample (hybrid Flow-SDE), given that step's `gaussian_scale_terms` per sample (e.g. `[B, 1, 1]`).

    Every other step has x_{k+1} == mean_k exactly, so the deviations x_{k+1} - mean_k summed over the steps are
    x_{j+1} - mean_j exactly: no gather, and only one step's worth of density arithmetic. Equal bit for bit (up
    to the sign of zero) to `gaussian_log_prob(x_{j+1}, mean_j, std_j)`, which the learner computes.
    """
    deviation = (chain[:, 1:] - means).sum(dim=1)
    return gaussian_log_prob_of_deviation(deviation, safe_std, log_normalizer)


def score_transition(
    step_fn: StepFn, x_from: Tensor, x_to: Tensor, t: Tensor, stochastic: Tensor
) -> ChainTransition:
    """Log-prob (with gradients through `step_fn`) of given transitions x_from -> x_to at times `t [B]`."""
    mean, std = step_fn(x_from, t, stochastic)
    return ChainTransition(log_prob=gaussian_log_prob(x_to, mean, std), std=std)


def chain_step_log_probs(
    step_fn: StepFn, chain: Tensor, *, times: Tensor, stochastic: Tensor
) -> ChainTransition:
    """Score every transition of a recorded chain `[B, K+1, H, A]`; steps no sample takes stochastically are
    skipped (their log-prob is exactly 0, std 0). Returns `[B, K, H, A]` log-probs and stds."""
    batch, num_steps = chain.shape[0], chain.shape[1] - 1
    log_probs = torch.zeros(chain[:, 1:].shape, dtype=torch.float32, device=chain.device)
    stds = torch.zeros_like(log_probs)
    lp_list, std_list = [], []
    for k in range(num_steps):
        if not bool(stochastic[:, k].any()):
            lp_list.append(log_probs[:, k])
            std_list.append(stds[:, k])
            continue
        tr = score_transition(step_fn, chain[:, k], chain[:, k + 1], times[k].expand(batch), stochastic[:, k])
        lp_list.append(tr.log_prob)
        std_list.append(tr.std)
    return ChainTransition(log_prob=torch.stack(lp_list, dim=1), std=torch.stack(std_list, dim=1))


def chain_log_prob(
    step_log_probs: Tensor, *, initial_noise: Tensor | None = None, reduction: str = "sum"
) -> Tensor:
    """Per-element chain log-likelihood `[B, H, A]` from per-step terms `[B, K, H, A]`.

    `sum`: Σ_k terms (+ log N(x_{t_0}; 0, I) when `initial_noise` is given): the exact chain likelihood.
    `mean`: the same terms divided by their count (K, or K+1 with the prior), the reference's reduction.
    """
    total = step_log_probs.float().sum(dim=1)
    count = step_log_probs.shape[1]
    if initial_noise is not None:
        total = total + standard_normal_log_prob(initial_noise)
        count += 1
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / count
    raise ValueError(f"reduction={reduction!r} is not valid; allowed: sum, mean")


def reduce_log_prob(element_log_prob: Tensor, *, n_action_steps: int, action_dim: int, level: str) -> Tensor:
    """Keep only executed elements (first C horizon steps, first `action_dim` real dims) and reduce.

    `element_log_prob` is `[B, H, A_model]`. Returns `[B]` for `chunk`, `[B, C]` for `action`,
    `[B, C, action_dim]` for `element`. float32.
    """
    executed = element_log_prob[:, :n_action_steps, :action_dim].float()
    if level == "chunk":
        return executed.sum(dim=(1, 2))
    if level == "action":
        return executed.sum(dim=2)
    if level == "element":
        return executed
    raise ValueError(f"level={level!r} is not valid; allowed: chunk, action, element")
