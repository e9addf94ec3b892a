"""Endpoint pickers: weighted round robin, least request (power of two choices, like Envoy) and random."""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Callable
from math import gcd

from meshbox.proxy.upstream_hosts import UpstreamHost

Picker = Callable[[], UpstreamHost | None]


def _none() -> None:
    return None


def round_robin(hosts: list[UpstreamHost], weights: list[int]) -> Picker:
    """Cycle through hosts; a host of weight w appears w times per cycle, spread out (smooth WRR)."""
    if not hosts:
        return _none
    divisor = 0
    for w in weights:
        divisor = gcd(divisor, w)
    scaled = [w // divisor for w in weights]
    if sum(scaled) > 10_000:
        # Huge uneven weights: approximate with proportional random choice.
        return lambda: random.choices(hosts, weights)[0]
    order: list[UpstreamHost] = []
    current = [0] * len(hosts)
    total = sum(scaled)
    for _ in range(total):
        for i, w in enumerate(scaled):
            current[i] += w
        best = max(range(len(hosts)), key=current.__getitem__)
        current[best] -= total
        order.append(hosts[best])
    return itertools.cycle(order).__next__


def least_request(hosts: list[UpstreamHost], weights: list[int]) -> Picker:
    """Pick two hosts at random and take the one with fewer requests in flight per unit of weight."""
    if not hosts:
        return _none
    if len(hosts) == 1:
        only = hosts[0]
        return lambda: only
    pairs = list(zip(hosts, weights, strict=True))
    choose = random.sample

    def pick() -> UpstreamHost:
        (a, wa), (b, wb) = choose(pairs, 2)
        return a if a.active * wb <= b.active * wa else b

    return pick


def random_choice(hosts: list[UpstreamHost], weights: list[int]) -> Picker:
    """Any host at random, in proportion to its weight."""
    if not hosts:
        return _none
    if len(set(weights)) == 1:
        choice = random.choice
        return lambda: choice(hosts)
    cumulative = list(itertools.accumulate(weights))
    total = cumulative[-1]
    draw = random.randrange
    return lambda: hosts[bisect.bisect_right(cumulative, draw(total))]
