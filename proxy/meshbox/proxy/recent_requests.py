"""The last HTTP exchanges a proxy process finished, with the direction of the listener that served each:
what ``meshctl trace`` asks the admin API (``GET /requests?id=X-REQUEST-ID``) to label a hop with the
direction the proxy knows, rather than guess it from the access log line (whose default format, the
tutorial's, has no field for it).

Recording is one tuple stored in a fixed ring per exchange (no allocation beyond it, nothing on the
response path); the ring forgets the oldest exchanges, so only recent requests can be asked about.
"""

from __future__ import annotations

from typing import Final

from meshbox.proxy.access_log import format_start_time
from meshbox.proxy.exchange import Exchange

SIZE: Final = 1024
# (x-request-id, start time, direction, listener name, upstream cluster, upstream host)
Entry = tuple[bytes, float, str, str, str, str]


class RecentRequests:
    """A ring of the last ``SIZE`` exchanges of this process."""

    __slots__ = ("at", "entries")

    def __init__(self) -> None:
        self.entries: list[Entry | None] = [None] * SIZE
        self.at = 0

    def record(self, ex: Exchange) -> None:
        """Remember finished exchange ``ex`` (one without a request id, a garbled request, is not asked about)."""
        request_id = ex.request_id
        listener = ex.listener
        if request_id and listener is not None:
            at = self.at
            self.entries[at] = (request_id, ex.start_time, listener.direction, listener.name,
                                ex.upstream_cluster or "-", ex.upstream_host or "-")
            self.at = (at + 1) % SIZE

    def find(self, request_id: bytes) -> list[dict[str, str]]:
        """Every remembered exchange with this x-request-id, oldest first, as the admin API answers them:
        ``start_time`` as the access log prints it, ``direction`` ``inbound`` or ``outbound``."""
        ordered = self.entries[self.at:] + self.entries[:self.at]
        return [{"request_id": rid.decode("latin-1"), "start_time": format_start_time(start),
                 "direction": direction.lower(), "listener": listener, "upstream_cluster": cluster,
                 "upstream_host": host}
                for entry in ordered if entry is not None
                for rid, start, direction, listener, cluster, host in (entry,) if rid == request_id]
