"""Recent figures per (model, adapter) for the console: totals, a token rate over the last few
seconds and time-to-first-token percentiles over the last requests. Memory is fixed per label
(a ring of one-second buckets, a bounded sample of TTFTs) and labels are capped by
``ServerMetrics``, so a busy server costs no more than an idle one."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

RATE_WINDOW_S = 10  # long enough to smooth a 2 s poll, short enough to read as "now"
TTFT_SAMPLES = 256


class RateWindow:
    """Events per second over the last ``seconds``: counts in one-second buckets kept in a ring,
    so adding is O(1) and memory is ``seconds`` integers whatever the traffic."""

    def __init__(self, seconds: int = RATE_WINDOW_S) -> None:
        if seconds < 2:
            raise ValueError("a rate window needs at least 2 seconds")
        self.seconds = seconds
        self._counts = [0] * seconds
        self._stamps = [-1] * seconds  # which whole second each bucket holds

    def add(self, count: int, now: float) -> None:
        second = int(now)
        slot = second % self.seconds
        if self._stamps[slot] != second:  # the bucket held an older second: reuse it
            self._stamps[slot], self._counts[slot] = second, 0
        self._counts[slot] += count

    def rate(self, now: float) -> float:
        """Counts in the buckets of the window ending now, over the time those buckets span:
        ``seconds - 1`` whole seconds plus the part of the current one gone by."""
        second = int(now)
        held = sum(c for c, s in zip(self._counts, self._stamps) if second - self.seconds < s <= second)
        return held / (self.seconds - 1 + (now - second))


def percentile(values: Iterable[float], q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0 < q <= 100) of ``values``; None when empty."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class LabelFigures:
    """One (model, adapter) label's requests, errors and tokens, and its recent rate and TTFTs."""

    requests: int = 0
    errors: int = 0
    tokens: int = 0
    rate: RateWindow = field(default_factory=RateWindow)
    ttfts: deque[float] = field(default_factory=lambda: deque(maxlen=TTFT_SAMPLES))

    def add_tokens(self, count: int, now: float) -> None:
        self.tokens += count
        self.rate.add(count, now)

    def summary(self, now: float) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "generated_tokens": self.tokens,
            "tokens_per_s": round(self.rate.rate(now), 2),
            "ttft_p50_s": percentile(self.ttfts, 50),
            "ttft_p95_s": percentile(self.ttfts, 95),
            "ttft_samples": len(self.ttfts),
        }
