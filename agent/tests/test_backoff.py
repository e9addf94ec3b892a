"""Backoff delays: exponential, capped, half jittered, and refusing nonsense input."""

from __future__ import annotations

import pytest

from meshbox.agent.backoff import Backoff


def test_delays_double_until_the_cap() -> None:
    b = Backoff(base=0.1, cap=1.0)
    lows = [b.delay(n, 0.0) for n in range(6)]
    highs = [b.delay(n, 0.999999) for n in range(6)]
    assert lows == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    assert highs == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0], rel=1e-5)


def test_jitter_spreads_delays_within_the_upper_half_of_the_step() -> None:
    b = Backoff(base=1.0, cap=8.0)
    delays = [b.delay(2, u / 100) for u in range(100)]
    assert min(delays) == pytest.approx(2.0)
    assert max(delays) < 4.0
    assert len(set(delays)) == 100


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert Backoff(base=0.1, cap=30.0).delay(10_000, 0.5) == pytest.approx(22.5)


@pytest.mark.parametrize(("attempt", "unit", "message"), [(-1, 0.5, "attempt"), (0, 1.0, "random_unit"),
                                                          (0, -0.1, "random_unit")])
def test_bad_arguments_are_refused(attempt: int, unit: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff().delay(attempt, unit)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (2.0, 1.0), (-1.0, 1.0)])
def test_bad_parameters_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base=base, cap=cap)
