"""The exchange state machine without any network: real parsed events and a real compiled config go in,
with times chosen by the test; the actions that come out are checked one by one (issue #14). The
header policy's pure functions are checked here too. The event loop object only exists because
ProxyContext holds one for the I/O layer: it is never run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshbox.proxy.access_log import AccessLog
from meshbox.proxy.codec import get_codec
from meshbox.proxy.codec.events import ProtocolError
from meshbox.proxy.codec.httptools_codec import HttptoolsRequestParser, HttptoolsResponseParser
from meshbox.proxy.config_compiler import compile_config
from meshbox.proxy.context import ProxyContext
from meshbox.proxy.exchange import (
    ARM,
    CLIENT_TIMER,
    CLOSE_DOWN,
    CLOSE_UP,
    DISARM,
    EXPECT,
    LOG,
    OPEN,
    PAUSE,
    RELEASE,
    RESUME,
    ROUTE_TIMER,
    TRY_TIMER,
    WRITE_DOWN,
    WRITE_UP,
    Exchange,
)
from meshbox.proxy.exchange_core import ExchangeCore
from meshbox.proxy.header_policy import absolute_form, end_to_end, named_hop_by_hop
from meshbox.proxy.snapshot import Workload

NAMES = {WRITE_DOWN: "WRITE_DOWN", OPEN: "OPEN", WRITE_UP: "WRITE_UP", EXPECT: "EXPECT", RELEASE: "RELEASE",
         CLOSE_UP: "CLOSE_UP", ARM: "ARM", DISARM: "DISARM", LOG: "LOG", PAUSE: "PAUSE", RESUME: "RESUME",
         CLOSE_DOWN: "CLOSE_DOWN"}
MakeCore = Callable[..., ExchangeCore]
UP, UP2 = "upstream-1", "upstream-2"  # the I/O layer's handles: opaque to the core


@pytest.fixture
def ctx() -> Iterator[ProxyContext]:
    loop = asyncio.new_event_loop()
    context = ProxyContext(loop=loop, codec=get_codec("httptools"), access_log=AccessLog(""),
                           workload=Workload("sleep", "default", "sleep"))
    yield context
    loop.close()


@pytest.fixture
def make_core(kit: Any, ctx: ProxyContext) -> Callable[..., ExchangeCore]:
    """An ExchangeCore for a connection to a listener of ``kit.http_config(**config)``."""

    def make(**config: Any) -> ExchangeCore:
        snap = compile_config(kit.http_config(8080, {"svc": [9090]}, **config), ctx.workload)
        snap.adopt(ctx.hosts, 1)
        ctx.snapshot = snap
        return ExchangeCore(ctx, snap.listeners[0], "10.0.0.1:5000", "10.0.0.2:8080")

    return make


def _take(core: ExchangeCore) -> list[tuple[Any, ...]]:
    core.flush()
    actions = list(core.actions)
    core.actions.clear()
    return actions


def _ops(actions: list[tuple[Any, ...]]) -> list[str]:
    return [NAMES[a[0]] for a in actions]


def _written(actions: list[tuple[Any, ...]]) -> bytes:
    return b"".join(a[1] for a in actions if a[0] == WRITE_DOWN)


def _feed(core: ExchangeCore, parser: HttptoolsRequestParser, data: bytes, now: float) -> list[tuple[Any, ...]]:
    try:
        events: list[Any] = parser.feed(data)
    except ProtocolError as exc:
        events = [*exc.events, exc]
    core.request_events(events, parser.partial_head, now)
    return _take(core)


def _response(core: ExchangeCore, up: object, data: bytes, now: float, method: bytes = b"GET") -> list[Any]:
    core.response_events(up, HttptoolsResponseParser(method).feed(data), now)
    return _take(core)


def test_a_request_goes_upstream_and_its_response_comes_back(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core()
    parser = HttptoolsRequestParser()
    actions = _feed(core, parser, b"GET /a HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n\r\n", now=100.0)
    assert _ops(actions) == ["OPEN"]
    ex, host = actions[0][1], actions[0][2]
    assert isinstance(ex, Exchange) and (host.address, host.port) == ("127.0.0.1", 9090)
    core.attached(ex, UP, now=100.002)
    actions = _take(core)
    assert _ops(actions) == ["EXPECT", "WRITE_UP", "ARM"]
    sent = actions[1][2]
    assert sent.startswith(b"GET /a HTTP/1.1\r\nhost: svc\r\nuser-agent: t\r\nx-request-id: ")
    assert actions[2][1:] == (ROUTE_TIMER, ex, 15.0)
    assert host.active == 1
    actions = _response(core, UP, b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", now=100.012)
    assert _ops(actions) == ["DISARM", "WRITE_DOWN", "RELEASE", "LOG", "ARM"]
    assert actions[1][1] == (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-envoy-upstream-service-time: 10\r\n\r\nok")
    assert actions[2][1] == UP and host.active == 0
    assert actions[3][1] is ex and ex.duration_ms == 12 and ex.upstream_service_time == 10
    assert (ex.response_code, ex.response_flags, ex.user_agent, ex.bytes_sent) == (200, "-", b"t", 2)
    assert actions[4][1:] == (CLIENT_TIMER, None, ctx.idle_timeout)


def test_route_timeout_answers_504_and_drops_the_attempt(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core(timeout="2s")
    ex = _feed(core, HttptoolsRequestParser(), b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", 0.0)[0][1]
    core.attached(ex, UP, 0.0)
    _take(core)
    core.timer_fired(ROUTE_TIMER, ex, 2.05)
    actions = _take(core)
    assert "CLOSE_UP" in _ops(actions) and actions[_ops(actions).index("CLOSE_UP")][1] == UP
    written = _written(actions)
    assert written.startswith(b"HTTP/1.1 504 ") and written.endswith(b"upstream request timeout")
    assert (ex.response_code, ex.response_flags, ex.duration_ms) == (504, "UT", 2050)
    # A late answer on the dropped connection is not this exchange's: that connection is closed.
    assert _ops(_response(core, UP, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 3.0)) == ["CLOSE_UP"]


def test_connect_failure_is_retried_then_answered_503_uf(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core(retries=1)
    ex = _feed(core, HttptoolsRequestParser(), b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", 0.0)[0][1]
    core.connect_failed(ex, 0.1)
    assert _ops(_take(core)) == ["OPEN"]
    core.connect_failed(ex, 0.2)
    assert b" 503 " in _written(_take(core)) and ex.response_flags == "UF"
    assert ctx.stats.counters["upstream_rq_retry"] == 1


def test_per_try_timeout_sends_the_request_again_on_a_new_connection(ctx: ProxyContext, make_core: MakeCore) -> None:
    routes = [{"clusters": [{"cluster": "svc"}], "retries": {"attempts": 1, "per_try_timeout": "0.5s"}}]
    core = make_core(routes=routes)
    ex = _feed(core, HttptoolsRequestParser(), b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", 0.0)[0][1]
    core.attached(ex, UP, 0.0)
    assert [a[1] for a in _take(core) if a[0] == ARM] == [ROUTE_TIMER, TRY_TIMER]
    core.timer_fired(TRY_TIMER, UP, 0.55)
    actions = _take(core)
    assert _ops(actions) == ["DISARM", "CLOSE_UP", "OPEN"]
    core.attached(ex, UP2, 0.56)
    actions = _take(core)
    # The route timeout keeps running across attempts: only the new attempt's timer is armed.
    assert [a[1:3] for a in actions if a[0] == ARM] == [(TRY_TIMER, UP2)]


def test_pipelined_requests_wait_and_a_local_reply_goes_out_at_once(ctx: ProxyContext, make_core: MakeCore) -> None:
    routes = [{"match": {"prefix": "/a"}, "clusters": [{"cluster": "svc"}]}]
    core = make_core(routes=routes)
    actions = _feed(core, HttptoolsRequestParser(), b"GET /a HTTP/1.1\r\nHost: svc\r\n\r\n"
                    b"GET /nothing HTTP/1.1\r\nHost: svc\r\n\r\n", 0.0)
    assert _ops(actions) == ["OPEN", "PAUSE"]
    ex = actions[0][1]
    core.attached(ex, UP, 0.0)
    _take(core)
    actions = _response(core, UP, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n", 0.01)
    writes = [a[1][:12] for a in actions if a[0] == WRITE_DOWN]
    assert writes == [b"HTTP/1.1 200", b"HTTP/1.1 404"]
    assert "RESUME" in _ops(actions) and "PAUSE" not in _ops(actions)


def test_head_timeout_and_body_timeout_on_the_client(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core()
    core.watch()
    assert _take(core) == [(ARM, CLIENT_TIMER, None, ctx.idle_timeout)]
    parser = HttptoolsRequestParser()
    assert _feed(core, parser, b"GET / HTTP/1.1\r\nHo", 1.0) == [(ARM, CLIENT_TIMER, None, ctx.head_timeout)]
    core.timer_fired(CLIENT_TIMER, None, 11.0)
    actions = _take(core)
    assert _written(actions).startswith(b"HTTP/1.1 408 ") and _ops(actions)[-1] == "CLOSE_DOWN"
    assert ctx.stats.counters["downstream_rq_header_timeout"] == 1


def test_a_pooled_connection_that_closed_silently_is_retried_once(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core()
    ex = _feed(core, HttptoolsRequestParser(), b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", 0.0)[0][1]
    core.attached(ex, UP, 0.0)
    _take(core)
    core.upstream_closed(UP, True, 0.01)
    assert _ops(_take(core)) == ["DISARM", "OPEN"]
    core.attached(ex, UP2, 0.02)
    _take(core)
    core.upstream_closed(UP2, False, 0.03)
    actions = _take(core)
    assert b" 503 " in _written(actions) and ex.response_flags == "UC"


def test_client_going_away_mid_response_is_logged_dc(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core()
    ex = _feed(core, HttptoolsRequestParser(), b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n", 0.0)[0][1]
    core.attached(ex, UP, 0.0)
    _take(core)
    core.client_closed(0.5)
    actions = _take(core)
    assert ("CLOSE_UP", UP) in [(NAMES[a[0]], a[1]) for a in actions if a[0] == CLOSE_UP]
    assert ex.response_flags == "DC" and ex.duration_ms == 500


def test_absolute_form_routes_by_authority(ctx: ProxyContext, make_core: MakeCore) -> None:
    core = make_core(domains=["svc"])
    actions = _feed(core, HttptoolsRequestParser(), b"GET http://SVC/x?y HTTP/1.1\r\nHost: other\r\n\r\n", 0.0)
    ex = actions[0][1]
    assert _ops(actions) == ["OPEN"] and ex.authority == b"svc" and ex.path == b"/x?y"
    assert ex.request_bytes.startswith(b"GET /x?y HTTP/1.1\r\n") and b"host: svc\r\n" in ex.request_bytes
    assert b"other" not in ex.request_bytes


def test_header_policy_never_lets_connection_remove_framing_or_mesh_headers() -> None:
    named = named_hop_by_hop(b"close, Content-Length, transfer-encoding, HOST, x-request-id, traceparent, x-b3-spanid,"
                             b" x-private, ,keep-alive")
    assert named == frozenset({b"x-private"})
    headers = [(b"content-length", b"5"), (b"connection", b"content-length, x-private"), (b"x-private", b"1"),
               (b"keep-alive", b"timeout=5"), (b"x-kept", b"2")]
    assert end_to_end(headers) == [(b"content-length", b"5"), (b"x-kept", b"2")]
    assert absolute_form(b"http://svc:8080") == (b"svc:8080", b"/")
    assert absolute_form(b"http://svc?q") == (b"svc", b"/?q")
    for bad in (b"http:///x", b"http://user@svc/"):
        with pytest.raises(ProtocolError):
            absolute_form(bad)
