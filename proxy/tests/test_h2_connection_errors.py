"""Our HTTP/2 connection fed hand-built bad frames: every connection error raises H2Error with its code
and queues a GOAWAY with the same code; every stream error sends RST_STREAM with its code, reports no
request, and leaves the connection's other streams working."""

from __future__ import annotations

import pytest

from meshbox.proxy import h2_events as ev
from meshbox.proxy.h2_connection import H2Connection
from meshbox.proxy.h2_events import (
    COMPRESSION_ERROR,
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    FLOW_CONTROL_ERROR,
    FRAME_SIZE_ERROR,
    INITIAL_WINDOW_SIZE,
    MAX_CONCURRENT_STREAMS,
    MAX_FRAME_SIZE,
    MAX_HEADER_LIST_SIZE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    STREAM_CLOSED,
    H2Error,
)
from meshbox.proxy.h2_frames import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    MAX_CONTINUATIONS,
    PADDED,
    PING,
    PREFACE,
    PRIORITY,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    WINDOW_UPDATE,
    frame,
)
from proxy.tests.h2_wire import POST, REQUEST, Frame, block, split_frames, started_client, started_server

GET = block(REQUEST)
OPEN = frame(HEADERS, END_HEADERS, 1, block(POST))  # stream 1, body to follow


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def setting(code: int, value: int) -> bytes:
    return code.to_bytes(2, "big") + u32(value)


def refuses(conn: H2Connection, data: bytes, code: int, message: str, last_stream_id: int = 0) -> None:
    """``data`` is a connection error: H2Error(code) naming the problem, GOAWAY(code) queued, and the
    connection takes nothing more."""
    with pytest.raises(H2Error, match=message) as info:
        conn.receive_data(data)
    assert info.value.code == code
    assert split_frames(conn.data_to_send())[-1] == Frame(GOAWAY, 0, 0, u32(last_stream_id) + u32(code))
    assert conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 101, GET)) == []


# -- connection errors -----------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "code", "message"), [
    (frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR, "DATA on stream 0"),
    (frame(HEADERS, END_HEADERS, 0, GET), PROTOCOL_ERROR, "HEADERS on stream 0"),
    (frame(SETTINGS, 0, 1), PROTOCOL_ERROR, "SETTINGS on a stream"),
    (frame(PING, 0, 1, b"12345678"), PROTOCOL_ERROR, "PING on a stream"),
    (frame(GOAWAY, 0, 1, u32(0) + u32(0)), PROTOCOL_ERROR, "GOAWAY on a stream"),
    (frame(RST_STREAM, 0, 0, u32(8)), PROTOCOL_ERROR, "RST_STREAM on stream 0"),
    (frame(PRIORITY, 0, 0, bytes(5)), PROTOCOL_ERROR, "PRIORITY on stream 0"),
    (frame(SETTINGS, 0, 0, setting(INITIAL_WINDOW_SIZE, 1 << 31)), FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE over"),
    (frame(SETTINGS, 0, 0, setting(MAX_FRAME_SIZE, 16383)), PROTOCOL_ERROR, "MAX_FRAME_SIZE 16383 out of range"),
    (frame(SETTINGS, 0, 0, setting(MAX_FRAME_SIZE, 1 << 24)), PROTOCOL_ERROR, "MAX_FRAME_SIZE 16777216 out of"),
    (frame(SETTINGS, 0, 0, setting(ENABLE_PUSH, 2)), PROTOCOL_ERROR, "ENABLE_PUSH 2"),
    (frame(SETTINGS, 0, 0, bytes(5)), FRAME_SIZE_ERROR, "not a multiple of 6"),
    (frame(SETTINGS, 1, 0, setting(ENABLE_PUSH, 0)), FRAME_SIZE_ERROR, "ACK with a payload"),
    (frame(PING, 0, 0, bytes(7)), FRAME_SIZE_ERROR, "PING payload is not 8 bytes"),
    (frame(GOAWAY, 0, 0, bytes(7)), FRAME_SIZE_ERROR, "GOAWAY shorter than 8 bytes"),
    (frame(WINDOW_UPDATE, 0, 0, bytes(3)), FRAME_SIZE_ERROR, "WINDOW_UPDATE payload is not 4 bytes"),
    (frame(WINDOW_UPDATE, 0, 0, u32(0)), PROTOCOL_ERROR, "WINDOW_UPDATE of 0 on the connection"),
    (frame(WINDOW_UPDATE, 0, 0, u32((1 << 31) - 1)), FLOW_CONTROL_ERROR, "connection window over"),
    (frame(DATA, 0, 1, b"x"), PROTOCOL_ERROR, "DATA on idle stream 1"),
    (frame(RST_STREAM, 0, 3, u32(8)), PROTOCOL_ERROR, "RST_STREAM on idle stream 3"),
    (frame(WINDOW_UPDATE, 0, 5, u32(1)), PROTOCOL_ERROR, "WINDOW_UPDATE on idle stream 5"),
    (frame(HEADERS, END_HEADERS, 2, GET), PROTOCOL_ERROR, "HEADERS on stream 2"),
    (frame(CONTINUATION, END_HEADERS, 1, GET), PROTOCOL_ERROR, "CONTINUATION without a header block"),
    (frame(HEADERS, 0, 1, GET[:2]) + frame(PING, 0, 0, bytes(8)), PROTOCOL_ERROR, "header block was interrupted"),
    (frame(HEADERS, 0, 1, GET[:2]) + frame(CONTINUATION, END_HEADERS, 3, GET[2:]), PROTOCOL_ERROR,
     "CONTINUATION without a header block"),
    (frame(HEADERS, 0, 1, b"") + frame(CONTINUATION, 0, 1) * (MAX_CONTINUATIONS + 1), ENHANCE_YOUR_CALM,
     "CONTINUATION flood"),
    (b"\x00\x40\x01" + frame(DATA, 0, 1)[3:] + bytes(16385), FRAME_SIZE_ERROR, "frame of 16385 bytes"),
    (frame(PUSH_PROMISE, END_HEADERS, 1, u32(2) + GET), PROTOCOL_ERROR, "PUSH_PROMISE"),
    (frame(HEADERS, END_HEADERS | PADDED, 1, b"\x05abc"), PROTOCOL_ERROR, "padding as long as the frame"),
    (frame(HEADERS, END_HEADERS | PRIORITY_FLAG, 1, b"\x00\x00"), FRAME_SIZE_ERROR, "too short for its priority"),
    (frame(HEADERS, END_HEADERS, 1, b"\xbe"), COMPRESSION_ERROR, "index 62 is not in the table"),
    (frame(HEADERS, END_HEADERS, 1, b"\x00\x84\xff\xff\xff\xff\x00"), COMPRESSION_ERROR, "EOS"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_connection_errors(data: bytes, code: int, message: str) -> None:
    refuses(started_server(), data, code, message)


def test_stream_frames_over_windows_and_padding_on_an_open_stream() -> None:
    refuses(_open(), frame(DATA, PADDED, 1, b"\x03ab"), PROTOCOL_ERROR, "padding as long as the frame", 1)
    refuses(_open(), frame(DATA, PADDED, 1), PROTOCOL_ERROR, "padding as long as the frame", 1)
    # 65536 bytes on a fresh connection: one over the 65535 connection window.
    refuses(_open(), frame(DATA, 0, 1, bytes(16384)) * 4, FLOW_CONTROL_ERROR, "over the connection window", 1)
    # A stream window at 2^31-1, then SETTINGS_INITIAL_WINDOW_SIZE + 1.
    conn = _open()
    conn.receive_data(frame(WINDOW_UPDATE, 0, 1, u32((1 << 31) - 1 - 65535)))
    refuses(conn, frame(SETTINGS, 0, 0, setting(INITIAL_WINDOW_SIZE, 65536)), FLOW_CONTROL_ERROR,
            "stream window over", 1)


def test_goaway_names_the_last_stream_the_peer_opened() -> None:
    conn = started_server()
    events = conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 1, GET)
                               + frame(HEADERS, END_HEADERS | END_STREAM, 7, GET))
    assert [e.stream_id for e in events if isinstance(e, ev.RequestReceived)] == [1, 7]
    refuses(conn, frame(PING, 0, 0, b"short"), FRAME_SIZE_ERROR, "PING payload", 7)


def test_the_first_frame_after_the_preface_must_be_settings() -> None:
    """RFC 9113 3.4 (found by the fuzz): a PING or a SETTINGS ACK first is a PROTOCOL_ERROR."""
    for first in (frame(PING, 0, 0, bytes(8)), frame(SETTINGS, 1, 0)):
        conn = H2Connection(False, {})
        conn.initiate_connection()
        conn.data_to_send()
        refuses(conn, PREFACE + first, PROTOCOL_ERROR, "first frame is not SETTINGS")


def test_a_connection_refused_on_its_first_read_still_sends_its_settings_first() -> None:
    """The caller drops what is queued before its GOAWAY (``clear_outbound_data_buffer``): the proxy's own
    SETTINGS stays, so the GOAWAY is not the first frame the peer sees (found by the fuzz)."""
    conn = H2Connection(False, {MAX_CONCURRENT_STREAMS: 7})
    conn.initiate_connection()
    conn.receive_data(PREFACE + frame(SETTINGS, 0, 0) + frame(PING, 0, 0, bytes(8)))
    conn.clear_outbound_data_buffer()
    conn.close_connection(ENHANCE_YOUR_CALM)
    frames = split_frames(conn.data_to_send())
    assert frames[0] == Frame(SETTINGS, 0, 0, setting(MAX_CONCURRENT_STREAMS, 7))
    assert frames[1:] == [Frame(GOAWAY, 0, 0, u32(0) + u32(ENHANCE_YOUR_CALM))]
    # Once sent, the greeting is not sent again.
    conn.clear_outbound_data_buffer()
    assert conn.data_to_send() == b""


def test_priority_of_the_wrong_size_on_an_idle_stream_ends_the_connection() -> None:
    """No RST_STREAM may name an idle stream, so the FRAME_SIZE_ERROR takes the connection (found by the
    fuzz: the stream was reset, then opened by its HEADERS and answered after its reset)."""
    refuses(_open(), frame(PRIORITY, 0, 15, bytes(2)), FRAME_SIZE_ERROR, "PRIORITY payload is not 5 bytes", 1)


def test_bad_preface() -> None:
    for start in (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", b"PRX"):
        conn = H2Connection(False, {})
        conn.initiate_connection()
        conn.data_to_send()
        refuses(conn, start, PROTOCOL_ERROR, "not the HTTP/2 connection preface")


def test_client_refuses_push_and_push_enabling() -> None:
    refuses(started_client(), frame(SETTINGS, 0, 0, setting(ENABLE_PUSH, 1)), PROTOCOL_ERROR, "ENABLE_PUSH 1")
    conn = started_client()
    conn.send_headers(1, REQUEST, end_stream=True)
    refuses(conn, frame(PUSH_PROMISE, END_HEADERS, 1, u32(2) + block([(b":status", b"200")])), PROTOCOL_ERROR,
            "PUSH_PROMISE")
    refuses(started_client(), frame(HEADERS, END_HEADERS, 2, block([(b":status", b"200")])), PROTOCOL_ERROR,
            "HEADERS on stream 2")


def test_header_list_over_the_limit_is_enhance_your_calm() -> None:
    conn = started_server({MAX_HEADER_LIST_SIZE: 1000})
    refuses(conn, frame(HEADERS, END_HEADERS, 1, block([*REQUEST, (b"x-big", b"v" * 1000)])), ENHANCE_YOUR_CALM,
            "header list larger than 1000 bytes")
    # A block spread over CONTINUATIONs is stopped once its compressed size alone is over the limit.
    conn = started_server({MAX_HEADER_LIST_SIZE: 1000})
    refuses(conn, frame(HEADERS, 0, 1, GET) + frame(CONTINUATION, 0, 1, bytes(1000)), ENHANCE_YOUR_CALM,
            "CONTINUATION flood")


# -- stream errors ---------------------------------------------------------------------------------

def _open() -> H2Connection:
    """A server with stream 1 open (a POST whose body is still to come)."""
    conn = started_server()
    [event] = conn.receive_data(OPEN)
    assert isinstance(event, ev.RequestReceived)
    return conn


def resets(conn: H2Connection, data: bytes, sid: int, code: int) -> list[ev.Event]:
    """``data`` is a stream error on ``sid``: only RST_STREAM(code) goes out, no request is reported."""
    events = conn.receive_data(data)
    assert not [e for e in events if isinstance(e, ev.RequestReceived) and e.stream_id == sid]
    assert split_frames(conn.data_to_send()) == [Frame(RST_STREAM, 0, sid, u32(code))]
    assert not conn.stream_is_open(sid)
    return events


def still_works(conn: H2Connection) -> None:
    """Stream 1 (opened by ``_open``) still takes its body, and a new stream still opens."""
    events = conn.receive_data(frame(DATA, END_STREAM, 1, b"body")
                               + frame(HEADERS, END_HEADERS | END_STREAM, 99, GET))
    assert [type(e).__name__ for e in events] == ["DataReceived", "StreamEnded", "RequestReceived", "StreamEnded"]
    assert events[0].data == b"body"


_BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")]


@pytest.mark.parametrize("headers", [
    [*_BASE, (b"X-Upper", b"1")],
    [*_BASE, (b"", b"empty name")],
    [*_BASE, (b"bad name", b"1")],
    [*_BASE, (b"connection", b"close")],
    [*_BASE, (b"keep-alive", b"timeout=5")],
    [*_BASE, (b"proxy-connection", b"keep-alive")],
    [*_BASE, (b"transfer-encoding", b"chunked")],
    [*_BASE, (b"upgrade", b"websocket")],
    [*_BASE, (b"te", b"gzip")],
    [*_BASE, (b"x-a", b"line\r\nbreak")],
    [*_BASE, (b"x-a", b"new\nline")],
    [*_BASE, (b"x-a", b"nul\x00byte")],
    [*_BASE, (b"x-a", b" leading")],
    [*_BASE, (b"x-a", b"trailing\t")],
    [*_BASE, (b"content-length", b"5")],
    [*_BASE, (b"content-length", b"-1")],
    [*_BASE, (b"content-length", b"1"), (b"content-length", b"2")],
    _BASE[1:],
    [_BASE[0], _BASE[2]],
    _BASE[:2],
    [*_BASE, (b":path", b"/again")],
    [*_BASE, (b":status", b"200")],
    [*_BASE, (b":protocol", b"websocket")],
    [_BASE[0], (b"x-a", b"1"), *_BASE[1:]],
    [(b":method", b"CONNECT"), (b":authority", b"a:443"), (b":path", b"/")],
    [(b":method", b"CONNECT")],
    [*_BASE[:2], (b":path", b"/\r\nx")],
    # Pseudo-headers that would not make a valid HTTP/1.1 request line or Host (found by the fuzz).
    [*_BASE[:2], (b":path", b"/v/a b")],
    [*_BASE[:2], (b":path", b"/caf\xc3\xa9")],
    [*_BASE[:2], (b":path", b"relative")],
    [(b":method", b"G T"), *_BASE[1:]],
    [(b":method", b""), *_BASE[1:]],
    [_BASE[0], (b":scheme", b"ht tp"), _BASE[2]],
    [*_BASE, (b":authority", b"a b")],
    [*_BASE, (b":authority", b"host/path")],
], ids=lambda h: repr(h[-1]))
def test_malformed_request_heads_are_reset(headers: list[tuple[bytes, bytes]]) -> None:
    conn = _open()
    resets(conn, frame(HEADERS, END_HEADERS | END_STREAM, 3, block(headers)), 3, PROTOCOL_ERROR)
    still_works(conn)


def test_well_formed_edge_cases_pass() -> None:
    """What the checks must not refuse: CONNECT with :authority only, te: trailers, inner spaces,
    obs-text, an empty value, content-length 0 with END_STREAM."""
    conn = started_server()
    heads = [[(b":method", b"CONNECT"), (b":authority", b"a:443")],
             [*_BASE, (b"te", b"trailers"), (b"x-a", b"in ner \x80\xff"), (b"x-b", b""), (b"content-length", b"0")]]
    events = conn.receive_data(b"".join(frame(HEADERS, END_HEADERS | END_STREAM, 2 * i + 1, block(h))
                                        for i, h in enumerate(heads)))
    assert [e.headers for e in events if isinstance(e, ev.RequestReceived)] == heads


def test_body_against_content_length() -> None:
    """Shorter than declared at END_STREAM, longer than declared, or trailers after too little: RST with
    PROTOCOL_ERROR, a StreamReset for the stream the caller knew."""
    for body, end in [(frame(DATA, END_STREAM, 3, b"abc"), "short"), (frame(DATA, 0, 3, b"abcdef"), "long"),
                      (frame(DATA, 0, 3, b"abc") + frame(HEADERS, END_HEADERS | END_STREAM, 3, block([(b"x", b"y")])),
                       "trailers")]:
        conn = _open()
        head = frame(HEADERS, END_HEADERS, 3, block([*POST, (b"content-length", b"5")]))
        assert isinstance(conn.receive_data(head)[0], ev.RequestReceived)
        events = resets(conn, body, 3, PROTOCOL_ERROR)
        assert [(e.stream_id, e.error_code, e.remote) for e in events if isinstance(e, ev.StreamReset)] == [
            (3, PROTOCOL_ERROR, False)], end
        still_works(conn)


def test_trailers_without_end_stream() -> None:
    conn = _open()
    conn.receive_data(frame(HEADERS, END_HEADERS, 3, block(POST)))
    events = resets(conn, frame(HEADERS, END_HEADERS, 3, block([(b"grpc-status", b"0")])), 3, PROTOCOL_ERROR)
    assert [type(e).__name__ for e in events] == ["StreamReset"]
    still_works(conn)


def test_pseudo_header_in_trailers() -> None:
    conn = _open()
    conn.receive_data(frame(HEADERS, END_HEADERS, 3, block(POST)))
    resets(conn, frame(HEADERS, END_HEADERS | END_STREAM, 3, block([(b":status", b"200")])), 3, PROTOCOL_ERROR)
    still_works(conn)


def test_data_after_end_stream_is_stream_closed() -> None:
    conn = _open()
    conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 3, GET))
    events = resets(conn, frame(DATA, 0, 3, b"late"), 3, STREAM_CLOSED)
    assert [(e.stream_id, e.error_code) for e in events if isinstance(e, ev.StreamReset)] == [(3, STREAM_CLOSED)]
    # The late bytes are owed back to the connection window: they are not lost from it.
    assert conn.conn_recv_window + conn.conn_recv_unacked == 65535
    still_works(conn)


def test_stream_window_update_errors_reset_only_that_stream() -> None:
    conn = _open()
    conn.receive_data(frame(HEADERS, END_HEADERS, 3, block(POST)) + frame(HEADERS, END_HEADERS, 5, block(POST)))
    resets(conn, frame(WINDOW_UPDATE, 0, 3, u32(0)), 3, PROTOCOL_ERROR)
    resets(conn, frame(WINDOW_UPDATE, 0, 5, u32((1 << 31) - 1)), 5, FLOW_CONTROL_ERROR)
    still_works(conn)


def test_priority_frame_of_the_wrong_size_resets_its_stream() -> None:
    conn = _open()
    conn.receive_data(frame(HEADERS, END_HEADERS, 3, block(POST)))
    resets(conn, frame(PRIORITY, 0, 3, bytes(4)), 3, FRAME_SIZE_ERROR)
    still_works(conn)


def test_concurrency_over_max_concurrent_streams_is_refused() -> None:
    conn = started_server({MAX_CONCURRENT_STREAMS: 2})
    opened = conn.receive_data(frame(HEADERS, END_HEADERS, 1, block(POST)) + frame(HEADERS, END_HEADERS, 3,
                                                                                   block(POST)))
    assert len(opened) == 2
    resets(conn, frame(HEADERS, END_HEADERS, 5, block(POST)), 5, REFUSED_STREAM)
    # Its body, sent before the client saw the refusal, is dropped but given back to the connection.
    assert conn.receive_data(frame(DATA, END_STREAM, 5, b"lost")) == []
    # Stream 1 finishes both ways: there is room again.
    conn.receive_data(frame(DATA, END_STREAM, 1, b""))
    conn.send_headers(1, [(b":status", b"204")], end_stream=True)
    conn.data_to_send()
    events = conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 7, GET))
    assert [(type(e).__name__, e.stream_id) for e in events] == [("RequestReceived", 7), ("StreamEnded", 7)]


# -- stream errors on our client side --------------------------------------------------------------

@pytest.mark.parametrize("head", [
    [(b"content-type", b"text/plain")],
    [(b"x-a", b"1"), (b":status", b"200")],
    [(b":status", b"2000")],
    [(b":status", b"20x")],
    [(b":status", b"200"), (b":status", b"204")],
    [(b":status", b"200"), (b":path", b"/")],
    [(b":status", b"200"), (b"Content-Type", b"x")],
    [(b":status", b"200"), (b"connection", b"close")],
    [(b":status", b"200"), (b"content-length", b"3")],
], ids=lambda h: repr(h[-1]))
def test_malformed_response_heads_are_reset(head: list[tuple[bytes, bytes]]) -> None:
    conn = started_client()
    conn.send_headers(1, REQUEST, end_stream=True)
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.data_to_send()
    events = resets(conn, frame(HEADERS, END_HEADERS | END_STREAM, 1, block(head)), 1, PROTOCOL_ERROR)
    assert [type(e).__name__ for e in events] == ["StreamReset"]
    events = conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 3, block([(b":status", b"200")])))
    assert [type(e).__name__ for e in events] == ["ResponseReceived", "StreamEnded"]


def test_client_data_before_the_response_head_and_informational_end() -> None:
    conn = started_client()
    conn.send_headers(1, REQUEST, end_stream=True)
    conn.send_headers(3, REQUEST, end_stream=True)
    conn.data_to_send()
    resets(conn, frame(DATA, 0, 1, b"early"), 1, PROTOCOL_ERROR)
    resets(conn, frame(HEADERS, END_HEADERS | END_STREAM, 3, block([(b":status", b"103")])), 3, PROTOCOL_ERROR)


# -- what must be ignored, not refused -------------------------------------------------------------

def test_unknown_frames_settings_and_idle_priority_are_ignored() -> None:
    """RFC 9113 4.1, 5.5, 6.3, 6.5.2: unknown frame types and settings, PRIORITY on an idle stream,
    GOAWAY debug data and the stream id's reserved bit change nothing."""
    conn = started_server()
    events = conn.receive_data(frame(0xFA, 0xFF, 0, b"extension") + frame(0xFA, 0, 9, b"")
                               + frame(PRIORITY, 0, 11, u32(0) + b"\x10"))
    assert events == [] and conn.data_to_send() == b""
    events = conn.receive_data(frame(SETTINGS, 0, 0, setting(0x99, 12345)))
    assert [type(e).__name__ for e in events] == ["RemoteSettingsChanged"]
    assert split_frames(conn.data_to_send()) == [Frame(SETTINGS, 1, 0, b"")]
    # Stream 1 with the reserved bit set in its id is stream 1.
    head = bytearray(frame(HEADERS, END_HEADERS | END_STREAM, 1, GET))
    head[5] |= 0x80
    assert [e.stream_id for e in conn.receive_data(bytes(head)) if isinstance(e, ev.RequestReceived)] == [1]
    events = conn.receive_data(frame(GOAWAY, 0, 0, u32(1) + u32(0) + b"debug data"))
    assert [(e.last_stream_id, e.error_code) for e in events if isinstance(e, ev.ConnectionTerminated)] == [(1, 0)]


def test_late_frames_on_a_stream_ours_reset_are_ignored() -> None:
    """After ours resets a stream the peer may still send on it (RFC 9113 5.1, closed): DATA is dropped
    but owed back to the connection window; WINDOW_UPDATE, RST_STREAM and trailers change nothing."""
    conn = _open()
    conn.reset_stream(1)
    assert split_frames(conn.data_to_send()) == [Frame(RST_STREAM, 0, 1, u32(8))]
    late = (frame(DATA, 0, 1, b"in flight") + frame(WINDOW_UPDATE, 0, 1, u32(100)) + frame(RST_STREAM, 0, 1, u32(8))
            + frame(HEADERS, END_HEADERS | END_STREAM, 1, block([(b"grpc-status", b"1")])))
    assert conn.receive_data(late) == []
    assert conn.data_to_send() == b""
    assert conn.conn_recv_window + conn.conn_recv_unacked == 65535
    # The HPACK state stayed in step: the next request decodes.
    events = conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 3, GET))
    assert [type(e).__name__ for e in events] == ["RequestReceived", "StreamEnded"]


def test_padded_data_counts_its_padding_for_flow_control() -> None:
    conn = _open()
    [data] = conn.receive_data(frame(DATA, PADDED, 1, b"\x0aabc" + bytes(10)))
    assert isinstance(data, ev.DataReceived)
    assert (data.data, data.flow_controlled_length) == (b"abc", 14)
    assert conn.conn_recv_window == 65535 - 14


def test_preface_and_frames_arrive_byte_by_byte() -> None:
    conn = H2Connection(False, {})
    conn.initiate_connection()
    conn.data_to_send()
    stream = PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, END_HEADERS | END_STREAM, 1, GET)
    events = []
    for at in range(len(stream)):
        events += conn.receive_data(stream[at:at + 1])
    assert [type(e).__name__ for e in events] == ["RemoteSettingsChanged", "RequestReceived", "StreamEnded"]
    assert events[1].headers == REQUEST


def test_a_stream_opened_below_the_highest_id_is_refused_as_closed() -> None:
    """RFC 9113 5.1.1: a HEADERS on a lower id than one the client already opened names a closed stream.
    It gets RST_STREAM STREAM_CLOSED (found by the fuzz: streams interleaved out of order were dropped
    without a word and the client waited for answers); the connection goes on."""
    conn = _open()
    opened = conn.receive_data(frame(HEADERS, END_HEADERS | END_STREAM, 9, GET))
    assert [e.stream_id for e in opened if isinstance(e, ev.RequestReceived)] == [9]
    conn.data_to_send()
    resets(conn, frame(HEADERS, END_HEADERS | END_STREAM, 5, GET), 5, STREAM_CLOSED)
    still_works(conn)
