"""One HTTP/1.1 request over a fresh loopback connection, spoken with h11.

The agent talks to two local HTTP servers only (the proxy's admin API and, for
``meshbox-agent wait``, its own status server), one small request at a time, so a
connection per request keeps this simple and leaves no state behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import h11

MAX_REPLY_BYTES = 16 * 1024 * 1024  # config dumps are the largest replies; refuse anything wilder


class HttpUnreachable(OSError):
    """The server could not be reached or did not answer a well-formed HTTP reply in time."""


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace").strip()


async def http_request(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    body: bytes = b"",
    content_type: str | None = None,
    timeout: float = 5.0,
) -> HttpReply:
    """Send one request and read the whole reply; raises HttpUnreachable on any transport failure."""
    try:
        return await asyncio.wait_for(_exchange(host, port, method, target, body, content_type), timeout)
    except TimeoutError as exc:
        raise HttpUnreachable(f"{method} http://{host}:{port}{target}: no reply within {timeout}s") from exc
    except (OSError, h11.ProtocolError) as exc:
        raise HttpUnreachable(f"{method} http://{host}:{port}{target}: {exc}") from exc


async def _exchange(
    host: str, port: int, method: str, target: str, body: bytes, content_type: str | None
) -> HttpReply:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        conn = h11.Connection(h11.CLIENT)
        headers = [("host", f"{host}:{port}"), ("connection", "close"), ("content-length", str(len(body)))]
        if content_type:
            headers.append(("content-type", content_type))
        out = conn.send(h11.Request(method=method, target=target, headers=headers))
        out += conn.send(h11.Data(data=body)) if body else b""
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()
        status = 0
        chunks: list[bytes] = []
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > MAX_REPLY_BYTES:
                    raise h11.RemoteProtocolError(f"reply larger than {MAX_REPLY_BYTES} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return HttpReply(status, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("connection closed before the reply ended")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
