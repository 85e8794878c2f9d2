"""Generalized advantage estimation (Schulman et al. 2016) over chunk steps, as pure functions.

One RL step is one executed action chunk; γ applies per chunk. Two flags are kept apart (as in TorchRL / SB3):

  * `terminated` — the task ended the episode: V(next) is not bootstrapped.
  * `done`       — the λ-trace stops here: terminated, truncated (time limit), or the end of a stream segment.

Truncated and segment-final rows bootstrap from `next_values` (V(final_obs) / V(o_{t+1})):

    δ_t = r_t + γ · next_values_t · (1 − terminated_t) − V_t
    A_t = δ_t + γλ · (1 − done_t) · A_{t+1}
    R_t = A_t + V_t

Everything is computed in float32 without gradients: advantages and returns are regression / policy-gradient
targets, so the inputs are detached.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _check_discount(gamma: float, lam: float) -> None:
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma={gamma} must lie in [0, 1]")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam={lam} must lie in [0, 1]")


def _check_same_shape(reference_name: str, reference: Tensor, **others: Tensor) -> None:
    for name, tensor in others.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
        if tensor.shape != reference.shape:
            raise ValueError(
                f"{name} has shape {tuple(tensor.shape)}, expected {tuple(reference.shape)} (the shape of {reference_name})"
            )


def _as_flag(name: str, flag: Tensor) -> Tensor:
    """bool or 0/1 tensor -> bool tensor."""
    if flag.dtype == torch.bool:
        return flag
    if flag.is_complex() or not bool(((flag == 0) | (flag == 1)).all()):
        raise ValueError(f"{name} must be bool or hold only 0/1 values")
    return flag != 0


@torch.no_grad()
def generalized_advantage_estimate(
    *,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    done: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE along the leading (time) axis.

    Args (all keyword-only, all the same shape `[T]` or `[T, N]`, time first, N independent environments):
        rewards: r_t, the chunk reward.
        values: V(o_t).
        next_values: V(o_{t+1}) for ordinary steps, V(final_obs) for truncated steps. Ignored where terminated.
        terminated: bool (or 0/1); no bootstrap from next_values.
        done: bool (or 0/1); stops the λ-trace (terminated | truncated | stream boundary). Must include
            every terminated step.
        gamma: per-chunk discount in [0, 1].
        lam: GAE λ in [0, 1] (1: Monte Carlo return − V, 0: one-step TD error).
    Returns:
        `(advantages, returns)`, float32, shape of `rewards`, no gradient (inputs are detached).
    """
    _check_discount(gamma, lam)
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a tensor, got {type(rewards).__name__}")
    if rewards.dim() not in (1, 2):
        raise ValueError(f"rewards must be [T] or [T, N] (time first), got shape {tuple(rewards.shape)}")
    _check_same_shape(
        "rewards", rewards, values=values, next_values=next_values, terminated=terminated, done=done
    )
    terminated = _as_flag("terminated", terminated)
    done = _as_flag("done", done)
    if bool((terminated & ~done).any()):
        raise ValueError("every terminated step must also be done (done = terminated | truncated | boundary)")

    rewards, values, next_values = rewards.detach().float(), values.detach().float(), next_values.detach().float()
    not_terminated = (~terminated).float()
    not_done = (~done).float()

    # δ_t for all t at once; the λ-trace is the only sequential part.
    delta = rewards + gamma * next_values * not_terminated - values
    advantages = torch.zeros_like(delta)
    last_gae_lam = torch.zeros_like(delta[0])
    for t in reversed(range(delta.shape[0])):
        last_gae_lam = delta[t] + gamma * lam * not_done[t] * last_gae_lam
        advantages[t] = last_gae_lam
    return advantages, advantages + values


@torch.no_grad()
def stream_gae(
    *,
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    stream_id: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """GAE over a flat batch of rows from several streams (e.g. a `Rollout`).

    Rows of one stream (one environment of one actor) appear in time order; streams may be interleaved in any
    way. Each stream's last row stops the λ-trace and bootstraps from its `next_values` unless terminated.

    Args (keyword-only, all `[N]`):
        rewards, values, next_values: float; `next_values` is V(o_{t+1}) (V(final_obs) when truncated).
        terminated, truncated: bool (or 0/1).
        stream_id: integer stream label of each row.
        gamma, lam: as in `generalized_advantage_estimate`.
    Returns:
        `(advantages, returns)`, float32 `[N]`, in the input row order, no gradient.
    """
    _check_discount(gamma, lam)
    if not isinstance(rewards, Tensor):
        raise TypeError(f"rewards must be a tensor, got {type(rewards).__name__}")
    if rewards.dim() != 1:
        raise ValueError(f"stream_gae takes a flat batch: rewards must be [N], got shape {tuple(rewards.shape)}")
    _check_same_shape(
        "rewards",
        rewards,
        values=values,
        next_values=next_values,
        terminated=terminated,
        truncated=truncated,
        stream_id=stream_id,
    )
    if stream_id.is_floating_point() or stream_id.dtype == torch.bool:
        raise TypeError(f"stream_id must be an integer tensor, got dtype {stream_id.dtype}")
    terminated = _as_flag("terminated", terminated)
    truncated = _as_flag("truncated", truncated)
    n = rewards.shape[0]
    device = rewards.device
    if n == 0:
        empty = torch.zeros(0, dtype=torch.float32, device=device)
        return empty, empty.clone()

    # Gather each stream into one column of a [T_max, S] grid, keeping the within-stream time order.
    sorted_ids, order = torch.sort(stream_id, stable=True)
    _, stream_index, counts = torch.unique_consecutive(sorted_ids, return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, dim=0) - counts
    position = torch.arange(n, device=device) - starts[stream_index]
    t_max, num_streams = int(counts.max()), int(counts.shape[0])
    is_last = position == (counts[stream_index] - 1)

    def to_grid(x: Tensor, fill: float | bool) -> Tensor:
        grid = torch.full((t_max, num_streams), fill, dtype=x.dtype, device=device)
        grid[position, stream_index] = x[order]
        return grid

    # Padding rows come after each stream's last row, which is done, so they never leak into real rows.
    done_sorted = (terminated | truncated)[order] | is_last
    done_grid = torch.ones((t_max, num_streams), dtype=torch.bool, device=device)
    done_grid[position, stream_index] = done_sorted
    adv_grid, _ = generalized_advantage_estimate(
        rewards=to_grid(rewards.float(), 0.0),
        values=to_grid(values.float(), 0.0),
        next_values=to_grid(next_values.float(), 0.0),
        terminated=to_grid(terminated, False),
        done=done_grid,
        gamma=gamma,
        lam=lam,
    )
    advantages = torch.empty(n, dtype=torch.float32, device=device)
    advantages[order] = adv_grid[position, stream_index]
    return advantages, advantages + values.detach().float()
