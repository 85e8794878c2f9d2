"""PPO losses and diagnostics as pure functions (Schulman et al. 2017; dual clip: Ye et al. 2020).

Policy loss, per element, with r = exp(ℓ_θ − ℓ_old):

    pg_loss1 = −A · r
    pg_loss2 = −A · clip(r, 1 − clip_low, 1 + clip_high)
    pg_loss  = max(pg_loss1, pg_loss2)                       (the pessimistic, clipped surrogate)
    dual clip (A < 0 only): pg_loss = min(pg_loss, −A · dual_clip)

The dual clip bounds the loss of a negative-advantage sample whose ratio has grown large (r > dual_clip > 1):
the standard clipped surrogate is unbounded there (−A·r grows with r); the dual clip caps it at |A|·dual_clip and
zeroes its gradient. Positive advantages are unaffected.

All log-prob arithmetic is float32; `old_log_prob` must be a stored constant (no grad).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class PolicyLossStats:
    """Detached 0-d float32 tensors over the kept (unmasked) elements; call `.item()` only when logging."""

    #: Fraction of elements whose ratio lies outside [1 − clip_low, 1 + clip_high].
    clip_fraction: Tensor
    #: mean((r − 1) − log r), the low-variance non-negative estimator of KL(old ‖ new) (Schulman's k3).
    approx_kl: Tensor
    ratio_mean: Tensor
    ratio_max: Tensor
    #: Fraction of elements where the dual clip was the active bound (0 without dual clip).
    dual_clip_fraction: Tensor


def _check_log_prob_dtype(name: str, x: Tensor) -> None:
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} has dtype {x.dtype}; log-probs must be computed in float32 (got a low-precision dtype)")


def _row_mask(mask: Tensor | None, n: int, device: torch.device) -> Tensor:
    if mask is None:
        return torch.ones(n, dtype=torch.bool, device=device)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
    if mask.shape != (n,):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected ({n},) (one flag per row)")
    return mask


def _expand_rows(row_values: Tensor, like: Tensor) -> Tensor:
    """`[N]` -> the shape of `like` (`[N]`, `[N, C]` or `[N, C, A]`) by broadcasting over trailing dims."""
    return row_values.reshape(row_values.shape + (1,) * (like.dim() - 1)).expand_as(like)


def _masked_mean(x: Tensor, keep: Tensor) -> Tensor:
    """Mean of `x` over elements where `keep`; 0 (still attached to the graph) when nothing is kept."""
    # `where`, not a product: a non-finite value in an excluded row must not reach the mean.
    return torch.where(keep, x, torch.zeros_like(x)).sum() / keep.sum().clamp_min(1).to(x.dtype)


def ppo_policy_loss(
    *,
    log_prob: Tensor,
    old_log_prob: Tensor,
    advantages: Tensor,
    clip_low: float,
    clip_high: float,
    dual_clip: float | None = None,
    mask: Tensor | None = None,
) -> tuple[Tensor, PolicyLossStats]:
    """Clipped PPO surrogate loss (to minimize) and its diagnostics.

    Args (keyword-only):
        log_prob: ℓ_θ, `[N]`, `[N, C]` (one ratio per action step) or `[N, C, A]` (per element), float32,
            with gradients.
        old_log_prob: ℓ_old, behaviour log-prob, same shape, must not require grad.
        advantages: `[N]` (one per chunk step; broadcast over C and A) or exactly the shape of `log_prob`.
            Treated as constants (detached).
        clip_low, clip_high: ratio clipped to [1 − clip_low, 1 + clip_high] (ε = 0.2 each for standard PPO).
        dual_clip: c > 1 for dual-clip PPO (reference 3.0), or None.
        mask: `[N]` bool, rows to keep (e.g. drop interventions / stale samples). Default: all rows.
    Returns:
        `loss` 0-d float32, the mean of pg_loss over kept elements (0 if none is kept; gradient flows to
        `log_prob` only), and `PolicyLossStats`.
    """
    if not isinstance(log_prob, Tensor) or not isinstance(old_log_prob, Tensor):
        raise TypeError("log_prob and old_log_prob must be tensors")
    if old_log_prob.requires_grad:
        raise ValueError("old_log_prob requires grad: the behaviour log-prob must be a stored constant (detach it)")
    if log_prob.dim() not in (1, 2, 3):
        raise ValueError(f"log_prob must be [N], [N, C] or [N, C, A], got shape {tuple(log_prob.shape)}")
    if old_log_prob.shape != log_prob.shape:
        raise ValueError(f"old_log_prob has shape {tuple(old_log_prob.shape)}, expected {tuple(log_prob.shape)}")
    _check_log_prob_dtype("log_prob", log_prob)
    _check_log_prob_dtype("old_log_prob", old_log_prob)
    n = log_prob.shape[0]
    if advantages.shape == (n,):
        adv = _expand_rows(advantages.detach().float(), log_prob)
    elif advantages.shape == log_prob.shape:
        adv = advantages.detach().float()
    else:
        raise ValueError(
            f"advantages has shape {tuple(advantages.shape)}, expected ({n},) or {tuple(log_prob.shape)}"
        )
    if not (clip_low >= 0 and clip_high >= 0 and clip_low < 1):
        raise ValueError(f"need 0 <= clip_low < 1 and clip_high >= 0, got clip_low={clip_low}, clip_high={clip_high}")
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip={dual_clip} must be > 1 (or None)")
    keep = _expand_rows(_row_mask(mask, n, log_prob.device), log_prob)

    log_ratio = log_prob.float() - old_log_prob.float()
    ratio = torch.exp(log_ratio)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip_low, 1.0 + clip_high)
    pg_loss = torch.maximum(pg_loss1, pg_loss2)
    dual_active = torch.zeros_like(keep)
    if dual_clip is not None:
        pg_loss3 = -adv * dual_clip
        negative = adv < 0
        dual_active = negative & (pg_loss3 < pg_loss)
        pg_loss = torch.where(negative, torch.minimum(pg_loss, pg_loss3), pg_loss)
    loss = _masked_mean(pg_loss, keep)

    with torch.no_grad():
        ratio_d, log_ratio_d = ratio.detach(), log_ratio.detach()
        clipped = (ratio_d < 1.0 - clip_low) | (ratio_d > 1.0 + clip_high)
        any_kept = bool(keep.any())
        stats = PolicyLossStats(
            clip_fraction=_masked_mean(clipped.float(), keep),
            approx_kl=_masked_mean((ratio_d - 1.0) - log_ratio_d, keep),
            ratio_mean=_masked_mean(ratio_d, keep),
            ratio_max=ratio_d[keep].max() if any_kept else torch.zeros((), device=log_prob.device),
            dual_clip_fraction=_masked_mean(dual_active.float(), keep),
        )
    return loss, stats


def huber(x: Tensor, *, delta: float) -> Tensor:
    """Elementwise Huber: ½x² for |x| <= δ, δ·(|x| − ½δ) beyond."""
    return F.huber_loss(x, torch.zeros_like(x), reduction="none", delta=delta)


def value_loss(
    *,
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    clip: float | None = None,
    huber_delta: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Clipped Huber value loss: mean over kept rows of max(huber(V − R), huber(V_clipped − R)).

    V_clipped = V_old + clip(V − V_old, −clip, clip); without `clip` the loss is mean huber(V − R).

    Args (keyword-only, all `[N]`):
        values: V_θ(o), with gradients.
        old_values: rollout-time values (constants).
        returns: GAE returns (constants).
        clip: value clip range c (reference 0.2), or None.
        huber_delta: Huber δ (reference 10); a large δ gives ½·squared error.
        mask: `[N]` bool rows to keep.
    Returns:
        0-d float32 loss; gradient flows to `values` only.
    """
    if values.dim() != 1:
        raise ValueError(f"values must be [N], got shape {tuple(values.shape)}")
    for name, t in (("old_values", old_values), ("returns", returns)):
        if t.shape != values.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(values.shape)}")
    if not huber_delta > 0:
        raise ValueError(f"huber_delta={huber_delta} must be > 0")
    if clip is not None and not clip > 0:
        raise ValueError(f"clip={clip} must be > 0 (or None)")
    keep = _row_mask(mask, values.shape[0], values.device)
    values = values.float()
    old_values, returns = old_values.detach().float(), returns.detach().float()
    v_loss_unclipped = huber(values - returns, delta=huber_delta)
    if clip is None:
        v_loss = v_loss_unclipped
    else:
        v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
        v_loss_clipped = huber(v_clipped - returns, delta=huber_delta)
        v_loss = torch.maximum(v_loss_unclipped, v_loss_clipped)
    return _masked_mean(v_loss, keep)


@torch.no_grad()
def explained_variance(pred: Tensor, target: Tensor) -> Tensor:
    """1 − Var[target − pred] / Var[target] as a 0-d float32 tensor (NaN when Var[target] = 0).

    1: perfect prediction; 0: no better than predicting the mean; < 0: worse than that.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred has shape {tuple(pred.shape)}, target {tuple(target.shape)}; they must match")
    pred, target = pred.detach().float().flatten(), target.detach().float().flatten()
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    var_target = target.var(correction=0)
    if var_target == 0:
        return torch.tensor(float("nan"), device=target.device)
    return 1.0 - (target - pred).var(correction=0) / var_target
