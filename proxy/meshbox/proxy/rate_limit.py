"""Local rate limiting: a token bucket per route, as Envoy's local rate limit filter keeps one.

The bucket starts full with ``max_tokens``; every ``fill_interval`` seconds it gains ``tokens_per_fill``,
never more than ``max_tokens``. A request takes one token, or is refused (429, flag RL) when none is
left. The level is refilled lazily from the time each request passes in (no timer), in whole intervals
as Envoy does, so a burst never exceeds ``max_tokens``. A bucket belongs to one proxy process: with
``--concurrency N`` each worker has its own, and a new config starts a new, full bucket.
"""

from __future__ import annotations


class TokenBucket:
    """Whole-interval token bucket; ``take(now)`` with the caller's monotonic clock."""

    __slots__ = ("fill_interval", "last_fill", "max_tokens", "tokens", "tokens_per_fill")

    def __init__(self, max_tokens: int, tokens_per_fill: int, fill_interval: float) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        if fill_interval <= 0:
            raise ValueError(f"fill_interval must be positive, got {fill_interval}")
        self.max_tokens = max_tokens
        self.tokens_per_fill = max(tokens_per_fill, 1)
        self.fill_interval = fill_interval
        self.tokens = max_tokens
        # Set by the first request: the bucket is pickled in a child process whose clock may differ.
        self.last_fill: float | None = None

    def take(self, now: float) -> bool:
        """Take one token: True when the request may pass."""
        last = self.last_fill
        if last is None:
            self.last_fill = now
        elif now - last >= self.fill_interval:
            intervals = int((now - last) / self.fill_interval)
            self.tokens = min(self.max_tokens, self.tokens + intervals * self.tokens_per_fill)
            self.last_fill = last + intervals * self.fill_interval
        if self.tokens > 0:
            self.tokens -= 1
            return True
        return False
