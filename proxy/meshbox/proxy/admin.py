"""The admin API on 127.0.0.1: readiness, config apply/dump, clusters, Prometheus stats, drain, quit.

Reads are GET; anything that changes state is POST only (GET on it answers 405), so a stray scrape or
browser visit cannot reconfigure or stop the proxy.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from meshbox.proxy.codec import get_codec
from meshbox.proxy.codec.events import END, Body, ProtocolError, RequestHead
from meshbox.proxy.codec.heads import reason_phrase
from meshbox.proxy.codec.writer import response_head_bytes
from meshbox.proxy.listen_socket import listening_socket
from meshbox.proxy.metrics import Stats
from meshbox.proxy.snapshot import ConfigRejected, Snapshot, Workload

MAX_CONFIG_BYTES = 64 << 20
POST_ONLY = frozenset({b"/config", b"/drain_listeners", b"/quitquitquit"})
GET_ONLY = frozenset({b"/", b"/ready", b"/config_dump", b"/clusters", b"/stats/prometheus", b"/requests"})


class Controller(Protocol):
    """What the admin API drives: one process, or the supervisor of ``--concurrency`` workers."""

    def ready(self) -> bool: ...

    async def apply(self, snapshot: Snapshot) -> int: ...

    def config_dump(self) -> bytes: ...

    def clusters_text(self) -> str: ...

    async def stats(self) -> list[Stats]: ...

    async def requests(self, request_id: bytes) -> list[dict[str, str]]: ...

    async def drain(self) -> None: ...

    def quit(self) -> None: ...


def _reply(status: int, body: bytes, content_type: bytes = b"text/plain; charset=utf-8") -> list[bytes]:
    return _reply_parts(status, [body], content_type)


def _reply_parts(status: int, parts: list[bytes], content_type: bytes) -> list[bytes]:
    """A response as the pieces to write: its head, then the body's ``parts`` (not joined: a scrape's
    are about 20 MB, and each copy of that much costs milliseconds)."""
    headers = [(b"content-type", content_type), (b"content-length", b"%d" % sum(map(len, parts)))]
    return [response_head_bytes(status, reason_phrase(status), headers), *parts]


def _query_value(target: bytes, name: bytes) -> bytes:
    """The (percent-decoded) value of query parameter ``name`` in a request target, b"" when absent."""
    from urllib.parse import unquote_to_bytes  # admin requests only

    _, _, query = target.partition(b"?")
    for pair in query.split(b"&"):
        key, _, value = pair.partition(b"=")
        if key == name:
            return unquote_to_bytes(value)
    return b""


class AdminServer:
    def __init__(self, controller: Controller, workload: Workload) -> None:
        self.controller = controller
        self.workload = workload
        self.server: asyncio.Server | None = None

    async def start(self, port: int, host: str = "127.0.0.1") -> int:
        """Listen (on loopback only by default); returns the actual port."""
        self.server = await asyncio.start_server(self._handle, sock=listening_socket(host, port, backlog=100))
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = get_codec("httptools").request_parser()
        head: RequestHead | None = None
        # One growing buffer, each read's chunk freed at once: a list of chunks held until the end would
        # fragment the heap so that a big refused config kept its memory (issue #18).
        body = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                try:
                    events = parser.feed(data)
                except ProtocolError as exc:
                    writer.writelines(_reply(exc.status, exc.reason.encode()))
                    return
                for ev in events:
                    if isinstance(ev, RequestHead):
                        head, body = ev, bytearray()
                        if (ev.content_length or 0) > MAX_CONFIG_BYTES:
                            writer.writelines(_reply(413, b"request body too large\n"))
                            return
                    elif isinstance(ev, Body):
                        if len(body) + len(ev.data) > MAX_CONFIG_BYTES:
                            writer.writelines(_reply(413, b"request body too large\n"))
                            return
                        body += ev.data
                    elif ev is END and head is not None:
                        writer.writelines(await self.route(head.method, head.target, body))
                        body = bytearray()
                        await writer.drain()
                        if not head.keep_alive:
                            return
                        head = None
        except ConnectionError:
            return
        finally:
            writer.close()

    async def route(self, method: bytes, target: bytes, body: bytes | bytearray) -> list[bytes]:
        """One admin request → the complete response, in pieces to write in order."""
        path = target.split(b"?", 1)[0]
        c = self.controller
        if path in POST_ONLY and method != b"POST":
            return _reply(405, b"use POST for " + path + b"\n")
        if path in GET_ONLY and method not in (b"GET", b"HEAD"):
            return _reply(405, b"use GET for " + path + b"\n")
        if path == b"/ready":
            return _reply(200, b"LIVE\n") if c.ready() else _reply(503, b"PRE_INITIALIZING\n")
        if path == b"/config":
            return await self._apply(body)
        if path == b"/config_dump":
            return _reply(200, c.config_dump(), b"application/json")
        if path == b"/clusters":
            return _reply(200, c.clusters_text().encode())
        if path == b"/stats/prometheus":
            from meshbox.proxy.metrics_exposition import render_parts  # on the first scrape only: see that module

            return _reply_parts(200, render_parts(await c.stats()), b"text/plain; version=0.0.4; charset=utf-8")
        if path == b"/requests":
            request_id = _query_value(target, b"id")
            if not request_id:
                return _reply(400, b"say which request: /requests?id=X-REQUEST-ID\n")
            found = await c.requests(request_id)
            import json  # admin-only, as below: kept out of the proxy until an operator asks

            return _reply(200, json.dumps({"requests": found}, indent=2).encode() + b"\n", b"application/json")
        if path == b"/drain_listeners":
            await c.drain()
            return _reply(200, b"OK\n")
        if path == b"/quitquitquit":
            asyncio.get_running_loop().call_soon(c.quit)
            return _reply(200, b"OK\n")
        if path == b"/":
            return _reply(200, b"".join(p + b"\n" for p in sorted(GET_ONLY | POST_ONLY)))
        return _reply(404, b"no such admin endpoint " + path + b"\n")

    async def _apply(self, body: bytes | bytearray) -> list[bytes]:
        try:
            from meshbox.proxy.compile_child import compile_in_child

            snapshot = await compile_in_child(body, self.workload)
            version = await self.controller.apply(snapshot)
        except ConfigRejected as exc:
            return _reply(400, f"{exc}\n".encode())
        return _reply(200, f"applied version {version}\n".encode())


def config_dump(config: bytes | None, version: int, ports: dict[str, int]) -> bytes:
    """The body of GET /config_dump: ``version``, the actual ``ports`` and the applied ``config`` (the
    ProxyConfig as JSON, pre-serialized in the compiling child: Snapshot.dump)."""
    import json

    head = json.dumps({"version": version, "ports": ports}, indent=2)[:-2]
    return b'%s,\n  "config": %s\n}\n' % (head.encode(), b"null" if config is None else config)
