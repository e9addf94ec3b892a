"""The agent's status server: the injected readiness probe and the Job-friendly exit.

Routes: ``GET /healthz/ready`` (200 once a config is applied and the proxy says it is
ready, else 503 with the reason), ``GET /stats/prometheus`` (the agent's and the proxy's
metrics merged, for the pod's ``prometheus.io/*`` scrape annotations), ``POST /quitquitquit``
(200, then agent and proxy exit 0). A wrong method gets 405 with ``Allow``; anything else 404. HTTP/1.1 via h11, with
keep-alive, request bodies capped.

The server listens on every address because the kubelet probes readiness and Prometheus scrapes
metrics on the pod IP, and the pod IP is reachable from the whole cluster (init does not capture
the status port). So a request whose peer is not a loopback address gets those two reads and
nothing else: 403 for ``/quitquitquit`` and for every other path and method.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

log = logging.getLogger("meshbox.agent")

READY_PATH = "/healthz/ready"
QUIT_PATH = "/quitquitquit"
METRICS_PATH = "/stats/prometheus"
MAX_BODY_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 30.0

Readiness = Callable[[], Awaitable[tuple[bool, str]]]
Metrics = Callable[[], Awaitable[str]]
TEXT = "text/plain; charset=utf-8"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    allow: str = ""
    content_type: str = TEXT


def route(method: str, target: str) -> Answer | str:
    """Which endpoint a request is for (``"ready"``, ``"metrics"`` or ``"quit"``), or the error answer to give."""
    path = target.split("?", 1)[0]
    endpoints = {READY_PATH: ("ready", "GET"), METRICS_PATH: ("metrics", "GET"), QUIT_PATH: ("quit", "POST")}
    if path not in endpoints:
        return Answer(404, f"no such endpoint {path} (try GET {READY_PATH} or POST {QUIT_PATH})")
    name, allowed = endpoints[path]
    if method == allowed or (method == "HEAD" and allowed == "GET"):
        return name
    return Answer(405, f"{path} takes {allowed}, not {method}", allow=allowed)


def is_loopback_peer(peer: object) -> bool:
    """Whether a socket peer (``getpeername()``) is on loopback: 127.0.0.0/8, ::1, or IPv4-mapped 127/8."""
    if not isinstance(peer, tuple) or not peer:
        return False
    try:
        address = ipaddress.ip_address(str(peer[0]).split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def remote_allowed(method: str, target: str) -> bool:
    """What a peer outside the pod may ask: the readiness probe and the metrics scrape (reads only)."""
    return route(method, target) in ("ready", "metrics")


class StatusServer:
    """Serves :func:`route`'s endpoints; ``readiness`` is asked on every probe, ``metrics`` on every scrape."""

    def __init__(self, readiness: Readiness, on_quit: Callable[[], None], metrics: Metrics | None = None) -> None:
        self._readiness = readiness
        self._on_quit = on_quit
        self._metrics = metrics

    async def start(self, host: str, port: int) -> asyncio.Server:
        """Listen on host:port (port 0 picks a free one)."""
        return await asyncio.start_server(self._serve, host, port)

    async def _answer(self, method: str, target: str) -> tuple[Answer, bool]:
        """The answer to one request, and whether to quit once it is sent."""
        routed = route(method, target)
        if isinstance(routed, Answer):
            return routed, False
        if routed == "quit":
            return Answer(200, "quitting: the proxy and the agent exit now"), True
        if routed == "metrics":
            if self._metrics is None:
                return Answer(404, f"{METRICS_PATH}: this status server serves no metrics"), False
            return Answer(200, await self._metrics(), content_type=METRICS_CONTENT_TYPE), False
        ready, reason = await self._readiness()
        return Answer(200 if ready else 503, reason), False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY_BYTES)
        peer = writer.get_extra_info("peername")
        local = is_loopback_peer(peer)
        try:
            while True:
                request = await self._read_request(conn, reader)
                if request is None:
                    return
                method, target, too_big = request
                if too_big:
                    answer, quit_after = Answer(413, f"request body over {MAX_BODY_BYTES} bytes"), False
                elif not local and not remote_allowed(method, target):
                    log.warning("status port: refused %s %s from %s (off loopback only readiness and metrics "
                                "are served)", method, target, peer[0] if isinstance(peer, tuple) else peer)
                    answer = Answer(403, f"{method} {target.split('?', 1)[0]} is answered only from the pod's "
                                         "loopback; this address gets readiness and metrics only")
                    quit_after = False
                else:
                    answer, quit_after = await self._answer(method, target)
                await self._write(conn, writer, answer, head_only=method == "HEAD", close=too_big)
                if quit_after:
                    self._on_quit()
                if too_big or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                with contextlib.suppress(h11.ProtocolError, OSError):
                    await self._write(conn, writer, Answer(400, f"bad request: {exc}"), head_only=False, close=True)
        except (h11.ProtocolError, OSError, TimeoutError) as exc:
            log.debug("status connection dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader
    ) -> tuple[str, str, bool] | None:
        """(method, target, body too big) of the next request, or None when the client is done."""
        method = target = ""
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT_S)
                conn.receive_data(data)
            elif isinstance(event, h11.Request):
                method, target = event.method.decode("ascii"), event.target.decode("ascii", errors="replace")
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_BODY_BYTES:
                    return method, target, True
            elif isinstance(event, h11.EndOfMessage):
                return method, target, False
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _write(
        self, conn: h11.Connection, writer: asyncio.StreamWriter, answer: Answer, *, head_only: bool, close: bool
    ) -> None:
        body = (answer.text if answer.text.endswith("\n") else answer.text + "\n").encode()
        headers = [("content-type", answer.content_type), ("content-length", str(len(body)))]
        if answer.allow:
            headers.append(("allow", answer.allow))
        if close:
            headers.append(("connection", "close"))
        out = conn.send(h11.Response(status_code=answer.status, headers=headers))
        if not head_only:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        writer.write(out)
        await writer.drain()
