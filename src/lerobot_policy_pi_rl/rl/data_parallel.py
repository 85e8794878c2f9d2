"""Data-parallel PPO updates: one global minibatch shared out over ranks so that the sum of the ranks' gradients is
the gradient of the single-process minibatch loss.

Conventions. Ranks 0..W-1 hold equal weights, optimizer states and the whole prepared rollout. Rank 0 draws every
minibatch permutation from its own global torch RNG, exactly where a single process draws it, and broadcasts it:
rank 0's RNG stream, and so a checkpoint of it, is the single-process one. Of a global minibatch of B rows, rank r
takes the contiguous rows [start_r, stop_r) (`shard_bounds`: the first B mod W ranks take one row more; a rank may
take none). Every loss term is a mean over a mask of the global minibatch,

    sum_{i in kept} x_i / n_kept  =  sum_r (mean of x over rank r's kept rows) * (n_kept_r / n_kept),

so each rank scales its term by `share_weight(n_kept_r, n_kept)` and the ranks' gradients are SUMMED (not averaged)
before clipping: every rank then clips and steps on the same global gradient, and the weights stay equal.
A world of one (`SINGLE_PROCESS`) communicates nothing and every share weight is exactly 1.

With the frozen weights sharded over the ranks (`shards_frozen`, `runtime/distributed.py`), every forward through
them gathers each layer from all ranks: a collective that every rank must enter the same number of times, in the
same order. Such a learner therefore runs every frozen forward on every rank (module docstring of
`rl/algorithm.py`, "Sharded frozen weights").
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def shard_bounds(n: int, *, rank: int, world_size: int) -> tuple[int, int]:
    """`[start, stop)` of rank `rank`'s contiguous share of `n` rows: `n // world_size` rows each, plus one for the
    first `n % world_size` ranks (shares differ by at most one row and cover `0..n` in rank order)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
    if n < 0:
        raise ValueError(f"n={n} rows must be >= 0")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def share_weight(local: int, total: int) -> float:
    """The factor a rank applies to its masked mean over `local` of the `total` kept rows of a global minibatch
    (0 when nothing is kept anywhere: the term is then 0 on every rank)."""
    if not 0 <= local <= total:
        raise ValueError(f"local={local} kept rows must lie in [0, total={total}]")
    return local / total if total else 0.0


class DataParallel:
    """The rank context of PPO updates (rank, world size) and the collectives they need.

    `control_group` carries `share` (whole Python objects, on the CPU): a process group whose timeout allows the
    other ranks to wait as long as rank 0 takes to collect a rollout. The default process group carries the
    per-minibatch collectives. `shards_frozen` is set once the policy's frozen weights are sharded over the ranks.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, control_group: Any = None):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must lie in [0, world_size={world_size})")
        self.rank = rank
        self.world_size = world_size
        self.control_group = control_group
        self.shards_frozen = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that talks to actors, logs, publishes weights and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def __repr__(self) -> str:
        return f"DataParallel(rank={self.rank}, world_size={self.world_size})"

    def permutation(self, n: int, device: torch.device | str) -> Tensor:
        """`torch.randperm(n)` drawn by rank 0 from its global RNG, the same on every rank."""
        if not self.distributed:
            return torch.randperm(n, device=device)
        import torch.distributed as dist

        perm = torch.randperm(n, device=device) if self.is_main else torch.empty(n, dtype=torch.long, device=device)
        dist.broadcast(perm, src=0)
        return perm

    def shard(self, rows: Tensor) -> Tensor:
        """This rank's contiguous share of a global minibatch's row indices."""
        if not self.distributed:
            return rows
        start, stop = shard_bounds(len(rows), rank=self.rank, world_size=self.world_size)
        return rows[start:stop]

    def sum(self, values: Tensor) -> Tensor:
        """Element-wise sum over ranks (a new tensor on every rank)."""
        return self._all_reduce(values, "SUM")

    def max(self, values: Tensor) -> Tensor:
        """Element-wise maximum over ranks."""
        return self._all_reduce(values, "MAX")

    def _all_reduce(self, values: Tensor, op: str) -> Tensor:
        values = values.detach().clone()
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(values, op=getattr(dist.ReduceOp, op))
        return values

    def sum_gradients(self, params: list[Tensor]) -> None:
        """Replace each parameter's `.grad` by its sum over ranks, in place, before clipping.

        A gradient that is None on some ranks (a rank with no rows of this minibatch ran no backward) counts as
        zeros there; it stays None only when it is None on every rank, as a single process leaves a parameter the
        loss never reached (the optimizer then skips it rather than decaying it)."""
        if not self.distributed or not params:
            return
        import torch.distributed as dist
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        device = params[0].device
        has_grad = torch.tensor([float(p.grad is not None) for p in params], device=device)
        dist.all_reduce(has_grad, op=dist.ReduceOp.MAX)
        reached = [p for p, has in zip(params, has_grad.tolist(), strict=True) if has > 0]
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for p in reached:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            by_dtype.setdefault(p.grad.dtype, []).append(p)
        for group in by_dtype.values():  # one collective per dtype: a flat buffer of the gradients
            flat = _flatten_dense_tensors([p.grad for p in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            for p, summed in zip(group, _unflatten_dense_tensors(flat, [p.grad for p in group]), strict=True):
                p.grad.copy_(summed)

    def share(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (the others pass None). Tensors travel on the CPU: an object with a `to`
        method is moved there first; the receiver moves what it got to its own device."""
        if not self.distributed:
            return obj
        import torch.distributed as dist

        box = [obj.to("cpu") if self.is_main and hasattr(obj, "to") else obj]
        dist.broadcast_object_list(box, src=0, group=self.control_group)
        return obj if self.is_main else box[0]


SINGLE_PROCESS = DataParallel()
