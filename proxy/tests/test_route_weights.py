"""Weighted clusters: all-zero weights are an equal split; a zero weight next to others gets nothing."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshbox.api.validation import ValidationError, validate_proxy_config


def _config(kit: Any, port: int, backends: dict[str, Any], weights: list[int]) -> Any:
    route = {"clusters": [{"cluster": name, "weight": w} for name, w in zip(backends, weights, strict=True)]}
    return kit.http_config(port, {name: [b.port] for name, b in backends.items()}, routes=[route])


@pytest.mark.parametrize(("weights", "low", "high"), [([0, 0], 60, 140), ([0, 5], 0, 0)])
def test_zero_weights(kit: Any, tmp_path: Path, weights: list[int], low: int, high: int) -> None:
    async def main() -> Counter[str]:
        backends = {"one": await kit.Backend("one").start(), "two": await kit.Backend("two").start()}
        port = kit.free_port()
        config = _config(kit, port, backends, weights)
        validate_proxy_config(config)  # all-zero weights are valid: they mean an equal split
        seen: Counter[str] = Counter()
        async with kit.proxy(config, tmp_path):
            client = await kit.Client.connect(port)
            for _ in range(200):
                resp = await client.request()
                seen[resp.json()["backend"]] += 1
            client.close()
        return seen

    seen = kit.run(main())
    assert sum(seen.values()) == 200
    assert low <= seen["one"] <= high, seen


def test_weights_over_32_bits_are_refused(kit: Any) -> None:
    config = kit.http_config(1080, {"a": [1], "b": [2]}, routes=[{"clusters": [
        {"cluster": "a", "weight": 2**32 - 1}, {"cluster": "b", "weight": 1}]}])
    with pytest.raises(ValidationError, match=r"clusters: weights add up to 4294967296, more than 4294967295"):
        validate_proxy_config(config)
