"""Spans: one per request and direction (client span outbound, server span inbound), with Istio's
attributes, handed to the agent without ever blocking the request path.

:meth:`Tracer.start` is called where the upstream request headers are built: it continues the incoming
trace (our span is a child of the sender's) or starts one (sampled at the configured rate), and returns
the headers with our span's context. :meth:`Tracer.finish` is called with the access log record: a
sampled span is encoded (one join of its values with ``meshbox.api.span_wire`` line pieces made once)
into a bounded buffer, sent in batches over a Unix datagram socket to the agent (a non-blocking ``send``
at most every ``FLUSH_SECONDS``, or at once when a datagram's worth of spans waits). A full buffer, or an
agent that is not there or not reading, drops spans and counts them
(``meshbox_proxy_tracing_spans_dropped_total``); requests never wait for any of it.
"""

from __future__ import annotations

import asyncio
import binascii
import os
import random
import socket
from typing import Final

from meshbox.api import span_wire
from meshbox.api.span_wire import clean, line_pieces
from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.metrics import Stats
from meshbox.proxy.snapshot import INBOUND, Workload
from meshbox.proxy.trace_context import Headers, incoming, outgoing

# Final: compiled code reads these as C statics, not from the module's dict per span.
_PROTOCOLS: Final[dict[str | None, bytes]] = {"HTTP/1.1": b"HTTP/1.1", "HTTP/1.0": b"HTTP/1.0"}
# A byte value, not b"\t": `b"\t" in data` first tries b"\t" as an integer and formats a TypeError.
_TAB: Final = ord("\t")
_INBOUND: Final[str] = INBOUND
BUFFER_LIMIT: Final = 4096
# span_wire.MAX_DATAGRAM as a C constant (meshbox.api is not compiled: its names are untyped objects here).
MAX_DATAGRAM: Final[int] = span_wire.MAX_DATAGRAM
FLUSH_SECONDS: Final = 0.2
# Random hex digits for ids, made 4 KiB at a time: slicing a pool costs a fraction of formatting a fresh
# random integer per id (about 0.8 µs a request for a new trace and its span).
ID_POOL_BYTES: Final = 2048
_rand: Final = random.Random()
# Decimal forms of the small numbers most spans carry (status codes, empty and small bodies), made on
# first use: a list index instead of formatting an int.
SMALL_NUMBERS: Final = 1024
CLUSTER_PARTS: Final = 1024
_decimals: Final[list[bytes | None]] = [None] * SMALL_NUMBERS


def decimal(n: int) -> bytes:
    """``n`` in decimal ASCII."""
    if 0 <= n < SMALL_NUMBERS:
        text = _decimals[n]
        if text is None:
            text = _decimals[n] = b"%d" % n
        return text
    return b"%d" % n


class IdPool:
    """Span ids (16 hex digits) and trace ids (32) sliced from a pool of random hex digits (os.urandom)."""

    __slots__ = ("at", "digits")

    def __init__(self) -> None:
        self.digits = b""
        self.at = 0

    def take(self, length: int) -> bytes:
        at = self.at
        end = at + length
        if end > len(self.digits):
            self.digits = binascii.hexlify(os.urandom(ID_POOL_BYTES))
            at, end = 0, length
        self.at = end
        return self.digits[at:end]


class Span:
    """The trace context of one exchange's span (recorded only when ``sampled``)."""

    __slots__ = ("kind", "parent_id", "sampled", "span_id", "trace_id")

    def __init__(self, kind: bytes, trace_id: bytes, span_id: bytes, parent_id: bytes, sampled: bool) -> None:
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.sampled = sampled


class Tracer:
    """Propagation, sampling and the span buffer of one proxy process."""

    def __init__(self, loop: asyncio.AbstractEventLoop, stats: Stats, sampling_percentage: float,
                 sink_path: str, workload: Workload) -> None:
        self.loop = loop
        self.stats = stats
        self.sampling = sampling_percentage
        self.sink_path = sink_path
        # Istio's span attributes: the proxy's own first (written into the pieces once), then the
        # request's, in the order finish() fills them.
        self.pieces: tuple[bytes, ...] = line_pieces(
            ((b"component", b"proxy"), (b"node_id", f"{workload.name}.{workload.namespace}".encode()),
             (b"istio.canonical_service", workload.app.encode()), (b"istio.namespace", workload.namespace.encode()),
             (b"downstream_cluster", b"-")),
            ((b"guid:x-request-id", b"%s"), (b"http.url", b"http://%s%s"), (b"http.method", b"%s"),
             (b"http.protocol", b"%s"), (b"http.status_code", b"%s"), (b"response_flags", b"%s"),
             (b"request_size", b"%s"), (b"response_size", b"%s"), (b"upstream_cluster", b"%s"),
             (b"upstream_cluster.name", b"%s"), (b"user_agent", b"%s"), (b"upstream_host", b"%s")),
            name=b"%s/*")
        # The line's start for each kind, and per cluster the bytes from the cluster's name to the user
        # agent's value: fewer pieces to join per span.
        self.client_head = self.pieces[0] + b"client" + self.pieces[1]
        self.server_head = self.pieces[0] + b"server" + self.pieces[1]
        self.cluster_parts: dict[str, bytes] = {}
        # Whether new traces are always / never sampled (no random number drawn then).
        self.sample_all = sampling_percentage >= 100
        self.sample_none = sampling_percentage <= 0
        self.buffer: list[bytes] = []
        # Bytes in ``buffer``.
        self.buffered = 0
        self.flush_armed = False
        self.sock: socket.socket | None = None
        self.ids = IdPool()
        _rand.seed()

    def start(self, record: LogRecord, headers: Headers, direction: str) -> tuple[Headers, Span]:
        """``headers`` carrying our new span's context, and that span."""
        context = incoming(record.request_headers)
        kind = b"server" if direction == _INBOUND else b"client"
        ids = self.ids
        span_id = ids.take(16)
        tracestate: bytes | None = None
        single_b3 = False
        if context is not None and context.trace_id:
            trace_id, parent_id = context.trace_id, context.span_id
            tracestate, single_b3 = context.tracestate, context.single_b3
        else:
            trace_id, parent_id = ids.take(32), b""
            if context is not None:
                single_b3 = context.single_b3
        if context is not None and context.sampled is not None:
            sampled = context.sampled
        else:
            sampled = self.sample_all or (not self.sample_none and _rand.random() * 100 < self.sampling)
        span = Span(kind, trace_id, span_id, parent_id, sampled)
        return outgoing(headers, trace_id, span_id, parent_id, sampled, tracestate, single_b3,
                        context is not None), span

    def finish(self, record: LogRecord, span: Span, cluster: str, elapsed_ms: float) -> None:
        """Buffer ``span`` (when sampled) with the attributes of the finished exchange ``record``."""
        if not span.sampled:
            return
        if len(self.buffer) >= BUFFER_LIMIT:
            self.stats.incr("tracing_spans_dropped")
            return
        start_ns = int(record.start_time * 1e9)
        authority = record.authority or b"-"
        path = record.path or b""
        agent = record.user_agent or b"-"
        request_id = record.request_id or b""
        if _TAB in authority or _TAB in path or _TAB in agent or _TAB in request_id:
            # Header values may hold tabs (HTAB is legal in field values); the wire format separates with them.
            authority, path, agent, request_id = (clean(authority), clean(path), clean(agent), clean(request_id))
        part = self.cluster_parts.get(cluster)
        if part is None:
            part = self._cluster_part(cluster)
        p = self.pieces
        # One join of the pieces and values: cheaper than a %-template of twenty fields.
        line = b"".join([
            self.server_head if span.kind == b"server" else self.client_head, span.trace_id, p[2], span.span_id,
            p[3], span.parent_id, p[4], b"%d" % start_ns, p[5], b"%d" % (start_ns + int(elapsed_ms * 1e6)), p[6],
            authority, p[7], request_id, p[8], authority, p[9], path, p[10], record.method or b"", p[11],
            _PROTOCOLS.get(record.protocol, b"-"), p[12], decimal(record.response_code), p[13],
            record.response_flags.encode(), p[14], decimal(record.bytes_received), p[15],
            decimal(record.bytes_sent), part, agent, p[19], (record.upstream_host or "-").encode(), p[20]])
        if self.buffered + len(line) > MAX_DATAGRAM:
            # A datagram's worth waits: one send now (rather than two, or a small one, later).
            self.flush()
        self.buffer.append(line)
        self.buffered += len(line)
        if not self.flush_armed:
            self.flush_armed = True
            self.loop.call_later(FLUSH_SECONDS, self._flush_timer)

    def _cluster_part(self, cluster: str) -> bytes:
        """The line's bytes from the key before the cluster's name to the user agent's value, kept for the
        next spans of ``cluster`` (at most CLUSTER_PARTS clusters: past that, the kept ones are forgotten)."""
        p = self.pieces
        name = cluster.encode()
        part = p[16] + name + p[17] + name + p[18]
        if len(self.cluster_parts) >= CLUSTER_PARTS:
            self.cluster_parts.clear()
        self.cluster_parts[cluster] = part
        return part

    def _flush_timer(self) -> None:
        # The one armed timer; a flush of a full datagram in between leaves it armed (no timer per send).
        self.flush_armed = False
        self.flush()

    def flush(self) -> None:
        """Send what is buffered, in datagrams of whole spans; what the socket does not take is dropped."""
        spans, self.buffer = self.buffer, []
        self.buffered = 0
        if not spans:
            return
        sock = self._socket()
        sent = 0
        start = 0
        while start < len(spans):
            end, size = start, 0
            while end < len(spans) and (end == start or size + len(spans[end]) <= MAX_DATAGRAM):
                size += len(spans[end])
                end += 1
            if sock is None or not self._send(sock, b"".join(spans[start:end])):
                break
            sent += end - start
            start = end
        if sent:
            self.stats.incr("tracing_spans_sent", sent)
        if sent < len(spans):
            self.stats.incr("tracing_spans_dropped", len(spans) - sent)

    def _send(self, sock: socket.socket, datagram: bytes) -> bool:
        try:
            sock.send(datagram)
        except BlockingIOError:
            return False
        except OSError:
            # The agent went away (or was never there): reconnect on the next flush.
            self.sock = None
            sock.close()
            return False
        return True

    def _socket(self) -> socket.socket | None:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            try:
                sock.connect(self.sink_path)
            except OSError:
                sock.close()
                return None
            self.sock = sock
        return self.sock
