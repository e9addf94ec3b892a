"""W3C Trace Context and B3 parsing and writing (meshbox.proxy.trace_context), and the tracer's choice
of trace, parent and sampling for a request (meshbox.proxy.tracing.Tracer.start), without network."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from meshbox.api import span_wire
from meshbox.proxy.access_log import LogRecord
from meshbox.proxy.metrics import Stats
from meshbox.proxy.snapshot import INBOUND, OUTBOUND, Workload
from meshbox.proxy.trace_context import incoming, outgoing, parse_b3_single, parse_traceparent
from meshbox.proxy.tracing import Span, Tracer

TRACE = b"4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = b"00f067aa0ba902b7"
VALID = b"00-" + TRACE + b"-" + SPAN + b"-01"


def test_valid_traceparent_and_flags() -> None:
    context = parse_traceparent(VALID)
    assert context is not None
    assert (context.trace_id, context.span_id, context.sampled) == (TRACE, SPAN, True)
    unsampled = parse_traceparent(VALID[:-2] + b"00")
    assert unsampled is not None and unsampled.sampled is False
    # Only bit 0 means sampled; other flag bits are kept out of the decision.
    assert parse_traceparent(VALID[:-2] + b"02").sampled is False  # type: ignore[union-attr]


@pytest.mark.parametrize("value", [
    b"ff-" + TRACE + b"-" + SPAN + b"-01",                      # version ff is forbidden
    b"00-" + TRACE.upper() + b"-" + SPAN + b"-01",              # uppercase hex
    b"00-" + b"0" * 32 + b"-" + SPAN + b"-01",                  # all-zero trace id
    b"00-" + TRACE + b"-" + b"0" * 16 + b"-01",                 # all-zero parent id
    b"00-" + TRACE[:-1] + b"-" + SPAN + b"-01",                 # short trace id
    b"00-" + TRACE + b"-" + SPAN + b"-01-extra",                # version 00 must be exactly 55 characters
    b"00_" + TRACE + b"_" + SPAN + b"_01",                      # wrong separators
    b"0g-" + TRACE + b"-" + SPAN + b"-01",                      # non-hex version
    b"",
    b"garbage",
])
def test_invalid_traceparent_is_refused(value: bytes) -> None:
    assert parse_traceparent(value) is None
    context = incoming([(b"traceparent", value)])
    assert context is not None and context.trace_id == b"" and context.sampled is None


def test_future_version_may_be_longer_after_a_dash() -> None:
    assert parse_traceparent(b"cc-" + TRACE + b"-" + SPAN + b"-01-what-comes-later") is not None
    assert parse_traceparent(b"cc-" + TRACE + b"-" + SPAN + b"-01x") is None


def test_tracestate_follows_a_valid_traceparent_only() -> None:
    context = incoming([(b"traceparent", VALID), (b"tracestate", b"a=1"), (b"tracestate", b"b=2")])
    assert context is not None and context.tracestate == b"a=1,b=2"
    assert incoming([(b"traceparent", b"bad"), (b"tracestate", b"a=1")]).trace_id == b""  # type: ignore[union-attr]


def test_two_traceparents_are_invalid() -> None:
    assert incoming([(b"traceparent", VALID), (b"traceparent", VALID)]).trace_id == b""  # type: ignore[union-attr]
    assert incoming([(b"host", b"svc")]) is None


def test_b3_multi_and_single() -> None:
    multi = incoming([(b"x-b3-traceid", TRACE[16:]), (b"x-b3-spanid", SPAN), (b"x-b3-sampled", b"1")])
    assert multi is not None
    assert (multi.trace_id, multi.span_id, multi.sampled) == (b"0" * 16 + TRACE[16:], SPAN, True)
    single = parse_b3_single(TRACE + b"-" + SPAN + b"-0-" + b"1" * 16)
    assert single is not None and (single.trace_id, single.span_id, single.sampled) == (TRACE, SPAN, False)
    assert single.single_b3
    deferred = parse_b3_single(TRACE + b"-" + SPAN)
    assert deferred is not None and deferred.sampled is None
    deny = incoming([(b"b3", b"0")])
    assert deny is not None and deny.trace_id == b"" and deny.sampled is False
    debug = incoming([(b"x-b3-traceid", TRACE), (b"x-b3-spanid", SPAN), (b"x-b3-flags", b"1")])
    assert debug is not None and debug.sampled is True
    assert parse_b3_single(TRACE + b"-" + SPAN + b"-x") is None
    assert incoming([(b"x-b3-traceid", b"xyz"), (b"x-b3-spanid", SPAN)]).trace_id == b""  # type: ignore[union-attr]


def test_w3c_wins_over_b3() -> None:
    other = b"1" * 32
    context = incoming([(b"x-b3-traceid", other), (b"x-b3-spanid", SPAN), (b"traceparent", VALID)])
    assert context is not None and context.trace_id == TRACE


def test_outgoing_replaces_every_trace_header() -> None:
    headers = [(b"host", b"svc"), (b"traceparent", VALID), (b"x-b3-spanid", SPAN), (b"b3", b"1"),
               (b"x-b3-flags", b"1")]
    new_span = b"1234567890abcdef"
    out = outgoing(headers, TRACE, new_span, SPAN, True, b"k=v", True)
    assert out == [
        (b"host", b"svc"),
        (b"traceparent", b"00-" + TRACE + b"-" + new_span + b"-01"),
        (b"tracestate", b"k=v"),
        (b"x-b3-traceid", TRACE),
        (b"x-b3-spanid", new_span),
        (b"x-b3-parentspanid", SPAN),
        (b"x-b3-sampled", b"1"),
        (b"b3", TRACE + b"-" + new_span + b"-1-" + SPAN),
    ]


def _start(tracer: Tracer, headers: list[tuple[bytes, bytes]], direction: str = OUTBOUND) -> tuple[
        list[tuple[bytes, bytes]], Span]:
    record = LogRecord(None, None)
    record.request_headers = headers
    return tracer.start(record, list(headers), direction)


def _tracer(sampling: float) -> Tracer:
    loop = asyncio.new_event_loop()
    try:
        return Tracer(loop, Stats(), sampling, "/nonexistent", Workload("w", "ns", "app"))
    finally:
        loop.close()


def test_tracer_continues_an_incoming_trace_as_a_child() -> None:
    out, span = _start(_tracer(0), [(b"traceparent", VALID)], INBOUND)
    assert span.kind == b"server"
    assert span.trace_id == TRACE and span.parent_id == SPAN
    assert span.span_id != SPAN and len(span.span_id) == 16
    # The sender sampled it: recorded even at a 0 % sampling rate.
    assert span.sampled is True
    assert (b"traceparent", b"00-" + TRACE + b"-" + span.span_id + b"-01") in out


def test_tracer_honours_an_unsampled_parent_at_100_percent() -> None:
    out, span = _start(_tracer(100), [(b"traceparent", VALID[:-2] + b"00")])
    assert span.sampled is False and span.trace_id == TRACE
    assert (b"x-b3-sampled", b"0") in out


def test_tracer_starts_a_new_trace_for_a_malformed_traceparent() -> None:
    out, span = _start(_tracer(100), [(b"traceparent", b"ff-" + TRACE + b"-" + SPAN + b"-01")])
    assert span.trace_id != TRACE and span.parent_id == b"" and span.sampled is True
    assert [h for h in out if h[0] == b"traceparent"] == [
        (b"traceparent", b"00-" + span.trace_id + b"-" + span.span_id + b"-01")]


def test_tracer_sampling_rate_for_new_traces() -> None:
    never = _tracer(0)
    always = _tracer(100)
    assert not any(_start(never, [])[1].sampled for _ in range(200))
    assert all(_start(always, [])[1].sampled for _ in range(200))
    half = _tracer(50)
    sampled = sum(_start(half, [])[1].sampled for _ in range(2000))
    assert 800 < sampled < 1200
    traces = {_start(always, [])[1].trace_id for _ in range(100)}
    assert len(traces) == 100


def test_ids_are_fresh_lowercase_hex_across_pool_refills() -> None:
    tracer = _tracer(100)
    spans = [_start(tracer, [])[1] for _ in range(500)]  # more ids than one pool holds
    ids = [s.span_id for s in spans] + [s.trace_id for s in spans]
    assert len(set(ids)) == len(ids)
    assert all(len(s.span_id) == 16 and len(s.trace_id) == 32 for s in spans)
    assert all(set(i) <= set(b"0123456789abcdef") for i in ids)


def test_spans_leave_in_full_datagrams(tmp_path: Path) -> None:
    """Once the next span would not fit the datagram, what waits is sent: every datagram but the last
    is as full as whole spans make it, none is over span_wire.MAX_DATAGRAM, and no span is lost."""
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / "spans.sock"))
    sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    loop = asyncio.new_event_loop()
    try:
        stats = Stats()
        tracer = Tracer(loop, stats, 100, str(tmp_path / "spans.sock"), Workload("w", "ns", "app"))
        for i in range(300):
            record = LogRecord(None, None)
            record.request_headers = []
            record.request_id = b"%036d" % i
            record.authority, record.path, record.method = b"svc\tx", b"/p", b"GET"
            _, span = tracer.start(record, [], OUTBOUND)
            tracer.finish(record, span, "outbound|80||svc", 1.5)
        tracer.flush()
    finally:
        loop.close()
    sink.setblocking(False)
    datagrams = []
    while True:
        try:
            datagrams.append(sink.recv(1 << 17))
        except BlockingIOError:
            break
    sink.close()
    lines = [line for d in datagrams for line in d.splitlines()]
    assert len(lines) == 300 and stats.counters == {"tracing_spans_sent": 300}
    line_size = len(lines[0]) + 1
    assert all(len(d) <= span_wire.MAX_DATAGRAM for d in datagrams)
    assert all(len(d) + line_size > span_wire.MAX_DATAGRAM for d in datagrams[:-1])
    assert all(b"svc x/*" in line for line in lines)  # the tab in the authority cleaned


def _receive_all(sink: socket.socket) -> list[bytes]:
    sink.setblocking(False)
    datagrams = []
    while True:
        try:
            datagrams.append(sink.recv(1 << 17))
        except BlockingIOError:
            return datagrams


@pytest.mark.parametrize(("code", "received", "sent", "protocol"), [
    (200, 0, 400, "HTTP/1.1"),
    (503, 1023, 1024, "HTTP/1.0"),      # either side of the small numbers kept in decimal
    (201, 5_000_000, 0, "HTTP/2"),      # a protocol the line writes as "-"
])
def test_span_line_is_the_wire_format_with_every_attribute(tmp_path: Path, code: int, received: int, sent: int,
                                                           protocol: str) -> None:
    """The line the tracer builds (pieces joined with the values) is byte for byte what
    span_wire.encode writes for the same span, and the agent's decode reads every attribute back."""
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(tmp_path / "spans.sock"))
    loop = asyncio.new_event_loop()
    try:
        tracer = Tracer(loop, Stats(), 100, str(tmp_path / "spans.sock"), Workload("w", "ns", "app"))
        record = LogRecord(None, None)
        record.request_headers = [(b"traceparent", VALID)]
        record.start_time = 1765000000.25
        record.method, record.path, record.authority = b"POST", b"/a?b=1", b"svc.ns:8080"
        record.protocol, record.response_code, record.response_flags = protocol, code, "UF"
        record.bytes_received, record.bytes_sent = received, sent
        record.request_id, record.user_agent, record.upstream_host = b"rid\t1", b"curl/8", "10.0.0.7:8080"
        _, span = tracer.start(record, [], INBOUND)
        tracer.finish(record, span, "inbound|8080||", 12.5)
        tracer.flush()
    finally:
        loop.close()
    (datagram,) = _receive_all(sink)
    sink.close()
    start = int(1765000000.25 * 1e9)
    expected = span_wire.encode(b"server", TRACE, span.span_id, SPAN, start, start + 12_500_000, b"svc.ns:8080/*", [
        (b"component", b"proxy"), (b"node_id", b"w.ns"), (b"istio.canonical_service", b"app"),
        (b"istio.namespace", b"ns"), (b"downstream_cluster", b"-"), (b"guid:x-request-id", b"rid 1"),
        (b"http.url", b"http://svc.ns:8080/a?b=1"), (b"http.method", b"POST"),
        (b"http.protocol", protocol.encode() if protocol != "HTTP/2" else b"-"),
        (b"http.status_code", b"%d" % code), (b"response_flags", b"UF"), (b"request_size", b"%d" % received),
        (b"response_size", b"%d" % sent), (b"upstream_cluster", b"inbound|8080||"),
        (b"upstream_cluster.name", b"inbound|8080||"), (b"user_agent", b"curl/8"),
        (b"upstream_host", b"10.0.0.7:8080")])
    assert datagram == expected
    (decoded,) = span_wire.decode(datagram)
    assert decoded.kind == "server" and decoded.parent_id == bytes.fromhex(SPAN.decode())
    assert decoded.end_ns - decoded.start_ns == 12_500_000
    assert dict(decoded.attributes)["http.status_code"] == str(code)


@pytest.mark.parametrize(("flags", "sampled"), [(b"00", False), (b"01", True), (b"02", False), (b"03", True),
                                                (b"0f", True), (b"fe", False), (b"ff", True)])
def test_sampled_is_bit_zero_of_the_flags(flags: bytes, sampled: bool) -> None:
    context = parse_traceparent(b"00-" + TRACE + b"-" + SPAN + b"-" + flags)
    assert context is not None and context.sampled is sampled


@pytest.mark.parametrize("value", [
    b"00-" + TRACE[:-1] + b"-" + b"-" + SPAN + b"-01",          # a fourth separator inside the trace id
    b"00-" + TRACE + b"-" + SPAN[:-1] + b"x-01",                # a non-hex digit
    b"0-0" + TRACE + b"-" + SPAN + b"-01",                      # the first separator misplaced
    b"00-" + TRACE + b"-" + SPAN + b"-0F",                      # uppercase flags
])
def test_traceparent_with_separators_or_digits_out_of_place_is_invalid(value: bytes) -> None:
    assert len(value) == 55 and parse_traceparent(value) is None
