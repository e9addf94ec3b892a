"""Exponential backoff with jitter, as a pure function of the attempt number.

"Equal jitter": half of the exponential step is kept, the other half is random, so a
fleet of agents reconnecting after a control-plane restart spreads out over time while
no single agent retries sooner than half the nominal delay.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delays ``base * 2**attempt`` capped at ``cap`` seconds, half of each one randomised."""

    base: float = 0.1
    cap: float = 10.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base} cap={self.cap}")

    def delay(self, attempt: int, random_unit: float) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based); ``random_unit`` is in [0, 1)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if not 0.0 <= random_unit < 1.0:
            raise ValueError(f"random_unit must be in [0, 1), got {random_unit}")
        # Cap the exponent before computing the power: 2**attempt overflows floats past ~1000.
        step = self.cap if attempt >= 64 else min(self.cap, self.base * 2.0**attempt)
        half = step / 2.0
        return half + half * random_unit
