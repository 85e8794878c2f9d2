"""Online/offline mixing: how many offline rows a PPO minibatch adds, and what the algorithm asks of their source.

Offline rows (demonstration frames, chunks a human took over) carry no behaviour log-prob: they enter the update
through the backbone's own flow-matching (SFT) loss, summed with the PPO losses of the online rows in one optimizer
step. The ratio is the offline share of a minibatch's rows: a minibatch of `n` online rows adds
`m = round(ratio / (1 - ratio) * n)` offline rows, so that `m / (n + m)` is `ratio` up to rounding; the online
rows, and with them the PPO loss's scale, stay what they are without mixing.
"""

from __future__ import annotations

import math
from fractions import Fraction
from dataclasses import dataclass
from typing import Protocol

from torch import Tensor


def offline_rows(online_rows: int, *, ratio: float) -> int:
    """Offline rows to add to a minibatch of `online_rows` online rows so that `ratio` is their share.

    Rounds half up (`floor(x + 1/2)`), so the count does not depend on Python's round-half-to-even, in exact
    rational arithmetic on the ratio as typed (0.2 is 1/5, 1/3 is 1/3: a float quotient would put 2.5 at
    2.4999...). `ratio` in [0, 1); 0 adds none.
    """
    if not 0 <= ratio < 1:
        raise ValueError(f"offline ratio={ratio} must be in [0, 1)")
    if online_rows < 0:
        raise ValueError(f"online_rows={online_rows} must be >= 0")
    r = Fraction(ratio).limit_denominator(10**6)
    return math.floor(r / (1 - r) * online_rows + Fraction(1, 2))


@dataclass
class OfflinePart:
    """Offline rows of one origin, as the policy's SFT `forward` consumes them."""

    #: Preprocessed batch: observations, normalized `action [B, H, A]` and `action_is_pad [B, H]`, on the policy's
    #: device.
    batch: dict[str, Tensor | list]
    #: B, the rows it holds.
    rows: int


class OfflineBatches(Protocol):
    """Where the algorithm draws offline rows from (the runtime's `OfflineSource`)."""

    def sample(self, rows: int) -> list[OfflinePart]:
        """`rows` offline rows drawn uniformly from everything available, grouped by origin (datasets, the
        intervention buffer); fewer parts (or none) when a source is empty. The parts' rows sum to `rows` unless
        nothing is available."""
        ...
