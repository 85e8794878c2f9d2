"""Critic-free advantages: GRPO's group-relative scores and batch advantage normalization.

GRPO (Shao et al. 2024), as PI-RL uses it: G rollouts start from the same initial state (one *group*); each
rollout's score S (e.g. episode success) becomes A = (S − mean_G) / (std_G + eps). A group whose scores are all
equal (all success or all fail) carries no learning signal and is dropped. std_G is the unbiased (n − 1) sample
std, as in verl / RLinf; a group of one row has std 0.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def grpo_advantages(
    *, scores: Tensor, group_ids: Tensor, eps: float = 1e-6, drop_uniform_groups: bool = True
) -> tuple[Tensor, Tensor]:
    """Group-relative advantages.

    Args (keyword-only):
        scores: `[N]` float (bool is accepted: success = 1).
        group_ids: `[N]` integer group label, >= 0 (rows of a group need not be contiguous). -1 (ungrouped)
            is rejected.
        eps: added to std_G.
        drop_uniform_groups: exclude zero-variance groups from `keep_mask`.
    Returns:
        `(advantages [N] float32, keep_mask [N] bool)`; advantages of a uniform group are 0. No gradient.
    """
    if scores.dim() != 1:
        raise ValueError(f"scores must be [N], got shape {tuple(scores.shape)}")
    if group_ids.shape != scores.shape:
        raise ValueError(f"group_ids has shape {tuple(group_ids.shape)}, expected {tuple(scores.shape)}")
    if group_ids.is_floating_point() or group_ids.dtype == torch.bool:
        raise TypeError(f"group_ids must be an integer tensor, got dtype {group_ids.dtype}")
    if bool((group_ids < 0).any()):
        bad = int((group_ids < 0).sum())
        raise ValueError(
            f"{bad} row(s) have a negative group_id (-1 = not grouped); GRPO needs every row in a group of "
            "rollouts from the same initial state"
        )
    if not eps >= 0:
        raise ValueError(f"eps={eps} must be >= 0")
    scores = scores.detach().float()
    n = scores.shape[0]
    if n == 0:
        return torch.zeros(0, device=scores.device), torch.zeros(0, dtype=torch.bool, device=scores.device)

    _, group, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    counts_f = counts.float()
    sums = torch.zeros_like(counts_f).index_add_(0, group, scores)
    means = sums / counts_f
    centered = scores - means[group]
    sq = torch.zeros_like(counts_f).index_add_(0, group, centered.square())
    stds = torch.where(counts > 1, torch.sqrt(sq / (counts_f - 1.0).clamp_min(1.0)), torch.zeros_like(counts_f))
    # Uniform by exact equality (max == min), not by a float variance that rounding can leave nonzero.
    g_max = torch.full_like(counts_f, -torch.inf).scatter_reduce_(0, group, scores, reduce="amax")
    g_min = torch.full_like(counts_f, torch.inf).scatter_reduce_(0, group, scores, reduce="amin")
    uniform = g_max == g_min
    uniform_row = uniform[group]
    safe_std = torch.where(uniform_row, torch.ones_like(centered), stds[group] + eps)
    advantages = torch.where(uniform_row, torch.zeros_like(centered), centered / safe_std)
    keep = ~uniform_row if drop_uniform_groups else torch.ones(n, dtype=torch.bool, device=scores.device)
    return advantages, keep


@torch.no_grad()
def normalize_advantages(adv: Tensor, mask: Tensor | None = None, eps: float = 1e-5) -> Tensor:
    """(adv − mean) / (std + eps), with mean and (unbiased) std over the kept rows, float32, no gradient.

    `adv` is `[N, ...]`; `mask` `[N]` bool selects the rows whose statistics are used (all rows are
    normalized with them, so excluded rows stay finite). With fewer than two kept elements the std is
    taken as 0 (centering only).
    """
    if adv.dim() < 1:
        raise ValueError("adv must have a leading row dimension, got a 0-d tensor")
    adv = adv.detach().float()
    if mask is None:
        kept = adv.flatten()
    else:
        if mask.dtype != torch.bool or mask.shape != adv.shape[:1]:
            raise ValueError(f"mask must be bool of shape {tuple(adv.shape[:1])}, got {mask.dtype} {tuple(mask.shape)}")
        kept = adv[mask].flatten()
    if kept.numel() == 0:
        return adv.clone()
    mean = kept.mean()
    std = kept.std() if kept.numel() > 1 else torch.zeros((), device=adv.device)
    return (adv - mean) / (std + eps)


@torch.no_grad()
def complete_groups(*, group_ids: Tensor, episode_ends: Tensor, group_size: int) -> Tensor:
    """Rows `[N]` bool whose group is complete: `group_size` of its episodes have ended within these rows.

    An episode ends at its one `done` row, and every episode of a group comes from a different env, so a group
    is complete when it holds `group_size` done rows. Rows with group id -1 (not grouped) are never complete.
    Rows of incomplete groups wait for the rest of their group (GRPO scores whole groups only).
    """
    if group_size < 1:
        raise ValueError(f"group_size={group_size} must be >= 1")
    if group_ids.shape != episode_ends.shape or group_ids.dim() != 1:
        raise ValueError(
            f"group_ids {tuple(group_ids.shape)} and episode_ends {tuple(episode_ends.shape)} must be the same [N]"
        )
    grouped = group_ids >= 0
    if not bool(grouped.any()):
        return grouped
    labels, inverse = torch.unique(group_ids, return_inverse=True)
    ends = torch.zeros(len(labels), dtype=torch.long, device=group_ids.device)
    ends.index_add_(0, inverse, (episode_ends & grouped).long())
    return grouped & (ends[inverse] >= group_size)
