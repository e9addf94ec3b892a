"""Envoy-format access log lines: the default format exactly, or a configured subset of %FIELD% operators.

Supported operators: START_TIME, PROTOCOL, RESPONSE_CODE, RESPONSE_FLAGS, BYTES_RECEIVED, BYTES_SENT,
DURATION, UPSTREAM_SERVICE_TIME, UPSTREAM_HOST, UPSTREAM_CLUSTER, DOWNSTREAM_REMOTE_ADDRESS,
DOWNSTREAM_LOCAL_ADDRESS, DOWNSTREAM_PEER_URI_SAN, DOWNSTREAM_TLS_VERSION, UPSTREAM_PEER_URI_SAN,
UPSTREAM_TRANSPORT_FAILURE_REASON, TRACE_ID (the trace of the request's span, when the proxy traces),
REQ(name) / RESP(name) (``REQ(A?B)`` tries A then B; ``:METHOD``, ``:PATH``,
``:AUTHORITY`` are the pseudo headers; ``%REQ(X):N%`` truncates to N characters) and the short forms the
tutorial writes: METHOD, PATH, AUTHORITY, USER-AGENT, X-FORWARDED-FOR, X-REQUEST-ID.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
import time
from collections.abc import Callable, Sequence
from typing import Final

from meshbox.proxy.grpc_status import status_name
from meshbox.proxy.metrics import Stats

DEFAULT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" %RESPONSE_CODE% '
    '%RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% '
    '"%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%"\n'
)

_wall_clock: Final = time.time


class LogRecord:
    """What a finished HTTP exchange or TCP session exposes to the log (bytes values are latin-1).

    The base class of both (not a Protocol) so that the compiled formatter reads these fields directly
    instead of looking each one up by name."""

    __slots__ = ("authority", "bytes_received", "bytes_sent", "downstream_local", "downstream_peer_uri",
                 "downstream_remote", "downstream_tls_version", "duration_ms", "forwarded_for", "grpc_status", "method",
                 "path",
                 "protocol", "request_headers", "request_id", "response_code", "response_flags", "response_headers",
                 "start_time", "upstream_cluster", "upstream_failure_reason", "upstream_host", "upstream_peer_uri",
                 "upstream_service_time", "user_agent")

    def __init__(self, remote: str | None, local: str | None) -> None:
        self.start_time: float = _wall_clock()
        self.method: bytes | None = None
        self.path: bytes | None = None
        self.authority: bytes | None = None
        self.protocol: str | None = None
        self.response_code: int = 0
        self.response_flags: str = "-"
        self.bytes_received: int = 0
        self.bytes_sent: int = 0
        self.duration_ms: int = 0
        self.upstream_service_time: int | None = None
        self.upstream_host: str | None = None
        self.upstream_cluster: str | None = None
        self.downstream_remote = remote
        self.downstream_local = local
        # The request's x-forwarded-for, user-agent and x-request-id (the one sent upstream).
        self.forwarded_for: bytes | None = None
        self.user_agent: bytes | None = None
        self.request_id: bytes | None = None
        # No headers at L4: an empty tuple shared by every TCP session and never modified.
        self.request_headers: Sequence[tuple[bytes, bytes]] = ()
        self.response_headers: Sequence[tuple[bytes, bytes]] = ()
        # Mutual TLS: the client's SPIFFE ID and TLS version, the upstream server's SPIFFE ID, and why a
        # TLS connection upstream failed.
        self.downstream_peer_uri: str | None = None
        self.downstream_tls_version: str | None = None
        self.upstream_peer_uri: str | None = None
        self.upstream_failure_reason: str | None = None
        # The gRPC status of a gRPC call (trailers, or the head of a trailers-only answer), else None.
        self.grpc_status: int | None = None


_second: Final[list[int]] = [-1]
_second_text: Final[list[bytes]] = [b""]


def _start_time(t: float) -> bytes:
    sec = int(t)
    if _second[0] != sec:
        _second[0] = sec
        _second_text[0] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode()
    return b"%s.%03dZ" % (_second_text[0], int((t - sec) * 1000))


def format_start_time(t: float) -> str:
    """UTC ISO 8601 with milliseconds and Z, e.g. 2017-05-01T22:08:39.310Z (the seconds part is cached)."""
    return _start_time(t).decode()


def _find(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> str:
    for n, v in headers:
        if n == name:
            return v.decode("latin-1")
    return "-"


_PROTOCOLS: Final = {"HTTP/1.1": b"HTTP/1.1", "HTTP/1.0": b"HTTP/1.0", "HTTP/2": b"HTTP/2", None: b"-"}
# Made once rather than per line: the milliseconds and what follows them up to the method, small numbers,
# and (bounded) the bytes of the flags and upstream host strings seen.
_MILLIS: Final = tuple(b'.%03dZ] "' % ms for ms in range(1000))
_SMALL: Final = tuple(b"%d" % n for n in range(1024))
_ENCODED: Final[dict[str, bytes]] = {}
_ENCODED_MAX: Final = 4096


def decimal(n: int) -> bytes:
    """``b"%d" % n``, from a table for the small numbers most fields hold (status codes, milliseconds)."""
    return _SMALL[n] if 0 <= n < 1024 else b"%d" % n


def _encoded(text: str) -> bytes:
    data = _ENCODED.get(text)
    if data is None:
        if len(_ENCODED) >= _ENCODED_MAX:
            _ENCODED.clear()
        data = _ENCODED[text] = text.encode()
    return data


def default_line(r: LogRecord) -> bytes:
    """Envoy's default format, written out by hand (as bytes: no decoding) because it runs per request:
    ``[START_TIME] "METHOD PATH PROTOCOL" CODE FLAGS RECEIVED SENT DURATION UPSTREAM_SERVICE_TIME
    "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST"``. One join of
    ready-made pieces (a ``%`` with 15 conversions cost about half as much again)."""
    ust = r.upstream_service_time
    host = r.upstream_host
    # _start_time, inlined (one call fewer per request); it still refreshes the cached seconds text.
    t = r.start_time
    sec = int(t)
    if _second[0] != sec:
        _start_time(t)
    return b"".join((
        b"[", _second_text[0], _MILLIS[int((t - sec) * 1000)], r.method or b"-", b" ", r.path or b"-", b" ",
        _PROTOCOLS.get(r.protocol, b"-"), b'" ', decimal(r.response_code), b" ", _encoded(r.response_flags), b" ",
        decimal(r.bytes_received), b" ", decimal(r.bytes_sent), b" ", decimal(r.duration_ms), b" ",
        b"-" if ust is None else decimal(ust), b' "', r.forwarded_for or b"-", b'" "', r.user_agent or b"-",
        b'" "', r.request_id or b"-", b'" "', r.authority or b"-", b'" "', _encoded(host) if host else b"-",
        b'"\n'))


Getter = Callable[[LogRecord], str]


def _trace_id(r: LogRecord) -> str:
    """The trace id of the proxy's span for this exchange (an Exchange's ``span``, set when the proxy
    traces: meshbox.proxy.tracing), else "-". Read by name: this module cannot import the exchange."""
    span = getattr(r, "span", None)
    return "-" if span is None else bytes(span.trace_id).decode()


_SIMPLE: dict[str, Getter] = {
    "START_TIME": lambda r: format_start_time(r.start_time),
    "PROTOCOL": lambda r: r.protocol or "-",
    "RESPONSE_CODE": lambda r: str(r.response_code),
    "RESPONSE_FLAGS": lambda r: r.response_flags,
    "BYTES_RECEIVED": lambda r: str(r.bytes_received),
    "BYTES_SENT": lambda r: str(r.bytes_sent),
    "DURATION": lambda r: str(r.duration_ms),
    "UPSTREAM_SERVICE_TIME": lambda r: "-" if r.upstream_service_time is None else str(r.upstream_service_time),
    "UPSTREAM_HOST": lambda r: r.upstream_host or "-",
    "DOWNSTREAM_PEER_URI_SAN": lambda r: r.downstream_peer_uri or "-",
    "DOWNSTREAM_TLS_VERSION": lambda r: r.downstream_tls_version or "-",
    "UPSTREAM_PEER_URI_SAN": lambda r: r.upstream_peer_uri or "-",
    "UPSTREAM_TRANSPORT_FAILURE_REASON": lambda r: r.upstream_failure_reason or "-",
    "UPSTREAM_CLUSTER": lambda r: r.upstream_cluster or "-",
    "DOWNSTREAM_REMOTE_ADDRESS": lambda r: r.downstream_remote or "-",
    "DOWNSTREAM_LOCAL_ADDRESS": lambda r: r.downstream_local or "-",
    "TRACE_ID": _trace_id,
    "GRPC_STATUS": lambda r: status_name(r.grpc_status),
    "GRPC_STATUS_NUMBER": lambda r: "-" if r.grpc_status is None else str(r.grpc_status),
}
_SHORT = {
    "METHOD": "REQ(:METHOD)", "PATH": "REQ(:PATH)", "AUTHORITY": "REQ(:AUTHORITY)",
    "USER-AGENT": "REQ(USER-AGENT)", "X-FORWARDED-FOR": "REQ(X-FORWARDED-FOR)", "X-REQUEST-ID": "REQ(X-REQUEST-ID)",
}
_PSEUDO: dict[str, Callable[[LogRecord], bytes | None]] = {
    ":method": lambda r: r.method, ":path": lambda r: r.path, ":authority": lambda r: r.authority,
}
_OPERATOR = re.compile(r"%([A-Z_\-]+(?:\([^()%]*\))?)(?::(\d+))?%")
_HEADER_OP = re.compile(r"(REQ|RESP)\(([^()]*)\)")


class FormatError(ValueError):
    """An access log format using an operator meshbox does not support."""


def _header_getter(kind: str, spec: str) -> Getter:
    names = [n.strip().lower() for n in spec.split("?")]
    if not names or not all(names) or len(names) > 2:
        raise FormatError(f"bad header operator {kind}({spec})")

    def one(name: str) -> Callable[[LogRecord], str | None]:
        if kind == "REQ" and name in _PSEUDO:
            pseudo = _PSEUDO[name]
            return lambda r: None if (v := pseudo(r)) is None else v.decode("latin-1")
        if name.startswith(":"):
            raise FormatError(f"unknown pseudo header {name} in {kind}({spec})")
        key = name.encode()
        if kind == "REQ":
            return lambda r: None if (v := _find(r.request_headers, key)) == "-" else v
        return lambda r: None if (v := _find(r.response_headers, key)) == "-" else v

    getters = [one(n) for n in names]

    def get(r: LogRecord) -> str:
        for g in getters:
            value = g(r)
            if value is not None:
                return value
        return "-"

    return get


def _operator(name: str) -> Getter:
    name = _SHORT.get(name, name)
    if name in _SIMPLE:
        return _SIMPLE[name]
    m = _HEADER_OP.fullmatch(name)
    if m:
        return _header_getter(m.group(1), m.group(2))
    raise FormatError(f"unsupported access log operator %{name}% "
                      f"(supported: {', '.join([*_SIMPLE, *_SHORT])}, REQ(header), RESP(header))")


def compile_format(fmt: str) -> Callable[[LogRecord], bytes]:
    """A function producing one log line per record; raises FormatError naming an unsupported operator."""
    if not fmt or fmt == DEFAULT_FORMAT:
        return default_line
    parts: list[str | tuple[Getter, int | None]] = []
    pos = 0
    for m in _OPERATOR.finditer(fmt):
        if m.start() > pos:
            parts.append(fmt[pos:m.start()])
        parts.append((_operator(m.group(1)), int(m.group(2)) if m.group(2) else None))
        pos = m.end()
    tail = fmt[pos:]
    if "%" in tail or any(isinstance(p, str) and "%" in p for p in parts):
        raise FormatError(f"unterminated or malformed %FIELD% in access log format {fmt!r}")
    if tail:
        parts.append(tail)
    if not fmt.endswith("\n"):
        parts.append("\n")

    def line(r: LogRecord) -> bytes:
        out = []
        for p in parts:
            if isinstance(p, str):
                out.append(p)
            else:
                value = p[0](r)
                out.append(value if p[1] is None else value[: p[1]])
        return "".join(out).encode("utf-8", "replace")

    return line


class AccessLog:
    """Buffers lines and writes them to a file descriptor in batches: at most ``delay`` seconds after the
    first buffered line, or at once when ``batch`` lines are waiting (one syscall per batch, not per line).

    Writing never blocks the event loop: a pipe or socket is switched to non-blocking mode, what it does
    not take waits (up to ``max_waiting`` bytes) until the loop says it is writable again, and lines that
    come while that much is waiting are dropped and counted (``dropped``, and the
    ``access_log_dropped_lines`` counter of the Stats given to :meth:`count_drops_in`)."""

    batch = 256
    max_waiting = 1 << 20

    def __init__(self, fmt: str, fd: int = 1) -> None:
        self.format = compile_format(fmt)
        # The default format is called directly (a C call, not a call through the stored function object).
        self._default = self.format is default_line
        self._fd = fd
        self._lines: list[bytes] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._delay = 0.0
        # Bytes the descriptor has not taken yet, from offset _sent on.
        self._waiting = b""
        self._sent = 0
        self._watching = False
        self._was_blocking = False
        self._stats: Stats | None = None
        self.dropped = 0

    def attach(self, loop: asyncio.AbstractEventLoop, delay: float = 0.01) -> None:
        """Flush from ``loop``, ``delay`` seconds after the first line of a batch."""
        self._loop = loop
        self._delay = delay
        mode = os.fstat(self._fd).st_mode
        # Regular files never make a write wait; pipes, sockets and terminals can.
        if (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)) and os.get_blocking(self._fd):
            self._was_blocking = True
            os.set_blocking(self._fd, False)

    def count_drops_in(self, stats: Stats) -> None:
        """Count dropped lines in ``stats`` (shown in metrics as meshbox_proxy_access_log_dropped_lines)."""
        self._stats = stats

    def close(self) -> None:
        """Write what is buffered, waiting as long as it takes, and stop writing (the file descriptor is
        the caller's to close; its blocking mode is restored)."""
        self.flush(final=True)
        if self._was_blocking and self._fd >= 0:
            os.set_blocking(self._fd, True)
        self._fd = -1

    def log(self, record: LogRecord) -> None:
        if self._fd < 0:
            return
        if len(self._waiting) - self._sent >= self.max_waiting:
            # The reader of our output is stuck: serving traffic matters more than this line.
            self.dropped += 1
            if self._stats is not None:
                self._stats.incr("access_log_dropped_lines")
            return
        lines = self._lines
        lines.append(default_line(record) if self._default else self.format(record))
        if len(lines) == 1:
            if self._loop is None:
                self.flush()
            else:
                self._loop.call_later(self._delay, self.flush)
        elif len(lines) >= self.batch:
            self.flush()

    def flush(self, final: bool = False) -> None:
        """Write buffered lines as far as the descriptor takes them now (``final``: all of them, waiting
        if needed: on exit)."""
        if self._fd < 0:
            return
        if self._lines:
            data = b"".join(self._lines)
            self._lines.clear()
            self._waiting = self._waiting[self._sent:] + data if self._waiting else data
            self._sent = 0
        if final and self._waiting and self._was_blocking:
            self._stop_watching()
            os.set_blocking(self._fd, True)
            self._write()
            os.set_blocking(self._fd, False)
        else:
            self._write()

    def _write(self) -> None:
        waiting = self._waiting
        view = memoryview(waiting)
        sent = self._sent
        while sent < len(waiting):
            try:
                sent += os.write(self._fd, view[sent:])
            except InterruptedError:
                continue
            except BlockingIOError:
                break
        view.release()
        if sent < len(waiting):
            self._sent = sent
            if not self._watching and self._loop is not None:
                self._watching = True
                self._loop.add_writer(self._fd, self._write)
        else:
            self._waiting = b""
            self._sent = 0
            self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watching and self._loop is not None:
            self._watching = False
            self._loop.remove_writer(self._fd)
