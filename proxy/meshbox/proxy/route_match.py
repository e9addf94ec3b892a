"""A request's route: its Host's virtual host, then the first route whose path prefix and header
conditions match. Runs per request, so it is compiled (hot_path); :class:`snapshot.RouteTable` holds the
tables and its ``match`` is this function."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshbox.proxy.snapshot import RouteRuntime, RouteTable


def match_route(table: RouteTable, host: bytes, path: bytes,
                headers: list[tuple[bytes, bytes]]) -> RouteRuntime | None:
    """The route for a request, or None (no route: NR)."""
    try:
        routes = table._cache[host]  # RouteTable.virtual_host's cache, read here first to save a call
    except KeyError:
        routes = table.virtual_host(host)
    if routes is None:
        return None
    for route in routes:
        if path.startswith(route.prefix):
            matchers = route.headers
            if not matchers or all(m.matches(headers) for m in matchers):
                return route
    return None
