"""The one retry policy: exponential backoff with a cap and jitter.

Attempt ``n`` (1-based) has the ceiling ``min(max_s, base_s · 2^(n-1))``. Jitter spreads the
retries of many clients that failed together (a database restart, a receiver back up), so
they do not come back in synchronized waves:

- ``full``: uniform in ``[0, ceiling]`` — the widest spread (callbacks to receivers);
- ``equal``: uniform in ``[ceiling/2, ceiling]`` — spread, yet never sooner than half the
  nominal delay (queue retries, CI calls, database reconnects);
- ``none``: the ceiling itself (a command-line client following one stream).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

Jitter = Literal["full", "equal", "none"]

#: 2**62 already dwarfs any cap; a larger exponent would only overflow.
_MAX_EXPONENT = 62


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff from ``base_s``, capped at ``max_s``, with ``jitter``."""

    base_s: float = 5.0
    max_s: float = 600.0
    jitter: Jitter = "equal"

    def ceiling(self, attempt: int) -> float:
        """The nominal delay after failed attempt number ``attempt`` (1-based)."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return min(self.max_s, self.base_s * 2.0**exponent)

    def delay(
        self, attempt: int, rng: random.Random | None = None, *, draw: float | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt``; ``draw`` (uniform in
        ``[0, 1)``, taken from ``rng`` when not given) places it within the jitter."""
        ceiling = self.ceiling(attempt)
        if self.jitter == "none":
            return ceiling
        if draw is None:
            draw = (rng or random).random()
        draw = max(0.0, draw)
        if self.jitter == "full":
            return draw * ceiling
        return ceiling / 2 + draw * ceiling / 2
