"""meshbox's echoserver: serves echoserver:1.4's answer (see echo_response) over asyncio + h11.

Run as ``python -m meshbox.cluster.echoserver --port 8080``. One access log line per request
on stdout, in nginx's combined format, as the image's nginx writes it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Callable
from email.utils import formatdate

import h11

from meshbox.cluster.echo_response import EchoRequest, render_body, response_headers

READ_SIZE = 65536
REASONS = {400: b"Bad Request", 413: b"Request Entity Too Large", 431: b"Request Header Fields Too Large"}
MAX_BODY = 16 * 1024 * 1024


def _text(value: bytes) -> str:
    return value.decode("latin-1")


def access_line(request: EchoRequest, status: int, sent: int) -> str:
    """nginx's combined log format for one answered request."""
    headers = dict((n.lower(), v) for n, v in request.headers)
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    return (f'{request.client_address} - - [{stamp}] "{request.method} {request.target} HTTP/{request.http_version}" '
            f'{status} {sent} "{headers.get("referer", "-")}" "{headers.get("user-agent", "-")}"')


class EchoConnection:
    """One client connection: parse with h11, answer each request, keep alive while the client does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listen_port: int,
                 log: Callable[[str], None]) -> None:
        self.reader = reader
        self.log = log
        self.writer = writer
        self.listen_port = listen_port
        self.conn = h11.Connection(h11.SERVER)
        peer = writer.get_extra_info("peername")
        sock = writer.get_extra_info("sockname")
        self.client_address = str(peer[0]) if peer else "-"
        self.server_host = str(sock[0]) if sock else "localhost"

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.reader.read(READ_SIZE)
            self.conn.receive_data(data)

    async def _send(self, *events: h11.Event) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                self.writer.write(data)
        await self.writer.drain()

    async def _read_request(self, head: h11.Request) -> EchoRequest:
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("client closed mid-request")
        return EchoRequest(
            client_address=self.client_address,
            method=_text(head.method),
            target=_text(head.target),
            http_version=_text(head.http_version),
            headers=[(_text(n), _text(v)) for n, v in head.headers],
            body=bytes(body),
        )

    async def _answer(self, request: EchoRequest) -> None:
        body = render_body(request, listen_port=self.listen_port, server_host=self.server_host)
        headers = response_headers(request, formatdate(usegmt=True))
        data = b"".join(self.conn.send(event) or b"" for event in (
            h11.Response(status_code=200, headers=headers, reason=b"OK"), h11.Data(data=body), h11.EndOfMessage()))
        # Logged as the answer is handed to the socket: a client that has read it finds the line written.
        self.log(access_line(request, 200, len(body)))
        self.writer.write(data)
        await self.writer.drain()

    async def _reject(self, status: int) -> None:
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = f"{status} bad request\n".encode()
        with contextlib.suppress(h11.LocalProtocolError, ConnectionError):
            await self._send(
                h11.Response(status_code=status, reason=REASONS.get(status, b""),
                             headers=[("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
                                      ("Connection", "close")]),
                h11.Data(data=body), h11.EndOfMessage())

    async def serve(self) -> None:
        """Answer requests until the client closes or breaks the protocol."""
        try:
            while True:
                event = await self._next_event()
                if not isinstance(event, h11.Request):
                    return
                request = await self._read_request(event)
                await self._answer(request)
                if self.conn.our_state is h11.MUST_CLOSE:
                    return
                self.conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            await self._reject(exc.error_status_hint)
        except ConnectionError:
            pass
        finally:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()


def print_line(line: str) -> None:
    """The access log goes to stdout, as the image's nginx writes it."""
    print(line, flush=True)


async def start(host: str, port: int, log: Callable[[str], None] = print_line) -> asyncio.Server:
    """Listen on host:port (0 = any free port) and echo every request, logging each to ``log``."""
    bound: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await EchoConnection(reader, writer, bound[0], log).serve()

    server = await asyncio.start_server(handle, host, port, reuse_address=True)
    bound.append(server.sockets[0].getsockname()[1])
    return server


async def serve(host: str, port: int) -> None:
    """Echo on host:port until cancelled."""
    server = await start(host, port)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--port`` (default 8080) and ``--host`` (default every address)."""
    parser = argparse.ArgumentParser(prog="meshbox-echoserver", description="echoserver:1.4, reproduced.")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error(f"--port must be 1-65535, got {args.port}")
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(args.host, args.port))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    except OSError as exc:
        print(f"echoserver: cannot listen on {args.host}:{args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
