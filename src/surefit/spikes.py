"""The spike detector's window of recent step losses: a median and a MAD kept cheap to read at
every accepted step. Written here: ``statistics.median`` sorts on every call, and no library
keeps a sliding window's order statistics in step with the window."""

from __future__ import annotations

import bisect
import operator
from collections import deque
from collections.abc import Iterable, Iterator
from itertools import repeat

SPIKE_WINDOW = 64  # accepted step losses the spike detector's median and MAD look back over
SPIKE_MIN_HISTORY = 16  # no spike is called before this many accepted steps


class LossWindow:
    """The last ``SPIKE_WINDOW`` accepted step losses, in arrival order and sorted.

    The sorted copy is kept in step with bisect, so the median is a lookup and a step costs two
    list moves rather than a sort (the spike detector runs at every accepted step).
    """

    def __init__(self, values: Iterable[float] = ()) -> None:
        self.order: deque[float] = deque()
        self.sorted: list[float] = []
        for v in values:
            self.append(v)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[float]:
        return iter(self.order)

    def append(self, value: float) -> None:
        if len(self.order) == SPIKE_WINDOW:
            del self.sorted[bisect.bisect_left(self.sorted, self.order.popleft())]
        self.order.append(value)
        bisect.insort(self.sorted, value)

    def median(self) -> float:
        return _median(self.sorted)

    def is_spike(self, loss: float, threshold: float) -> bool:
        """``loss`` above the median by ``threshold`` robust deviations (1.4826 x MAD, at
        least 0.1 % of the median); the MAD is computed only when the floor alone would not
        already clear ``loss``."""
        ordered = self.sorted
        n = len(ordered)
        if n < SPIKE_MIN_HISTORY:
            return False
        med = _median(ordered)
        floor = max(1e-3 * abs(med), 1e-12)
        if loss <= med + threshold * floor:
            return False
        scale = max(1.4826 * self.mad(med), floor)
        return loss > med + threshold * scale

    def mad(self, med: float) -> float:
        """The median absolute deviation from ``med``."""
        return _median(sorted(map(abs, map(operator.sub, self.sorted, repeat(med)))))


def _median(ordered: list[float]) -> float:
    """The median of a sorted list, as ``statistics.median`` computes it."""
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
