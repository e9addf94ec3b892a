"""A small client of Prometheus' HTTP query API (``/api/v1/query``, ``/api/v1/query_range``) on aiohttp.

Prometheus is reached at an http(s) URL, or at ``unix:PATH`` (the local cluster's Prometheus runs in the
cluster's node network namespace and is bridged to a Unix socket in its state directory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import aiohttp

TIMEOUT_S = 10.0


class PrometheusError(RuntimeError):
    """Prometheus could not be asked, or refused the query; the message says which and why."""


@dataclass(frozen=True)
class Sample:
    """One series of an instant vector: its labels and value."""

    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One series of a range query: its labels and (unix time, value) points."""

    labels: dict[str, str]
    points: list[tuple[float, float]]


def _number(text: str) -> float:
    """Prometheus' sample value text ("NaN" and "+Inf" included) as a float."""
    return float(text)


class Prometheus:
    """Queries one Prometheus; use as an async context manager (it owns an aiohttp session)."""

    def __init__(self, address: str) -> None:
        self.address = address
        if address.startswith("unix:"):
            self._base = "http://prometheus"
            self._socket = address[len("unix:"):]
        elif address.startswith(("http://", "https://")):
            self._base = address.rstrip("/")
            self._socket = ""
        else:
            raise PrometheusError(f"Prometheus address {address!r}: give http(s)://HOST:PORT or unix:PATH")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Prometheus:
        connector = aiohttp.UnixConnector(path=self._socket) if self._socket else None
        self._session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT_S))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        assert self._session is not None, "use Prometheus as an async context manager"
        try:
            async with self._session.get(self._base + path, params=params) as reply:
                try:
                    body = await reply.json(content_type=None)
                except ValueError:
                    raise PrometheusError(f"Prometheus at {self.address} answered HTTP {reply.status}, "
                                          "not JSON: is that a Prometheus?") from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise PrometheusError(f"cannot reach Prometheus at {self.address}: {exc or type(exc).__name__}") from None
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error", body) if isinstance(body, dict) else body
            raise PrometheusError(f"Prometheus refused {params.get('query', '')!r}: {error}")
        return body["data"]

    async def instant(self, query: str) -> list[Sample]:
        """An instant-vector query evaluated now."""
        data = await self._get("/api/v1/query", {"query": query})
        if data.get("resultType") != "vector":
            raise PrometheusError(f"{query!r} gave a {data.get('resultType')}, not an instant vector")
        return [Sample(dict(r["metric"]), _number(r["value"][1])) for r in data["result"]]

    async def range(self, query: str, start: float, end: float, step: float) -> list[Series]:
        """A range query from ``start`` to ``end`` (unix seconds), one point per ``step`` seconds."""
        data = await self._get("/api/v1/query_range", {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                                       "step": f"{step:g}"})
        return [Series(dict(r["metric"]), [(float(t), _number(v)) for t, v in r["values"]])
                for r in data["result"]]


def finite(value: float) -> float | None:
    """``value``, or None for NaN/Inf (JSON has neither)."""
    return value if math.isfinite(value) else None
