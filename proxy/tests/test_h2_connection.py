"""Our HTTP/2 connection (``meshbox.proxy.h2_connection``) against the ``h2`` package's, in memory, in
both roles: requests and responses with and without bodies, trailers, many streams, flow control,
SETTINGS, PING, GOAWAY and RST_STREAM. Whatever ours sends, h2 must accept and read back as sent."""

from __future__ import annotations

import random

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest

from meshbox.proxy import h2_events as ev
from meshbox.proxy.h2_events import (
    ENABLE_PUSH,
    ENHANCE_YOUR_CALM,
    INITIAL_WINDOW_SIZE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    FlowControlError,
    H2Error,
    StreamClosedError,
)
from meshbox.proxy.h2_frames import CONTINUATION, HEADERS, WINDOW_UPDATE
from proxy.tests.h2_wire import POST, REQUEST, RESPONSE, Pair, body_of, kinds

CLIENT_SETTINGS = {INITIAL_WINDOW_SIZE: 256 * 1024, ENABLE_PUSH: 0}
TRAILERS = [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]


# -- ours as the server, h2 as the client ----------------------------------------------------------

def test_server_get_without_body() -> None:
    pair = Pair(ours_client=False)
    pair.take()
    pair.ref.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    ours, _ = pair.take()
    assert kinds(ours) == ["RequestReceived", "StreamEnded"]
    assert ours[0].headers == REQUEST and ours[0].stream_ended and ours[0].stream_id == 1
    pair.ours.send_headers(1, RESPONSE)
    pair.ours.send_data(1, b"hello", end_stream=True)
    pair.pump()
    _, ref = pair.take()
    assert kinds(ref) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert ref[0].headers == RESPONSE and ref[1].data == b"hello"
    assert not pair.ours.stream_is_open(1)


def test_server_body_and_trailers_both_ways() -> None:
    pair = Pair(ours_client=False)
    pair.take()
    pair.ref.send_headers(1, [*POST, (b"te", b"trailers"), (b"content-length", b"6")])
    pair.ref.send_data(1, b"abc")
    pair.ref.send_data(1, b"def")
    pair.ref.send_headers(1, TRAILERS, end_stream=True)
    pair.pump()
    ours, _ = pair.take()
    assert kinds(ours) == ["RequestReceived", "DataReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert not ours[0].stream_ended
    assert body_of(ours, 1) == b"abcdef" and ours[3].headers == TRAILERS
    pair.ours.send_headers(1, RESPONSE)
    pair.ours.send_data(1, b"reply")
    pair.ours.send_headers(1, TRAILERS, end_stream=True)
    pair.pump()
    _, ref = pair.take()
    assert kinds(ref) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert ref[2].headers == TRAILERS
    assert pair.ours.streams == {}


def test_server_many_concurrent_streams_interleaved() -> None:
    """60 streams opened before any ends, their bodies interleaved, answered in reverse order."""
    pair = Pair(ours_client=False)
    pair.take()
    sids = list(range(1, 121, 2))
    for sid in sids:
        pair.ref.send_headers(sid, [*POST[:3], (b":authority", b"s%d" % sid)])
    for part in range(3):
        for sid in sids:
            pair.ref.send_data(sid, b"%d-%d;" % (sid, part), end_stream=part == 2)
    pair.pump()
    ours, _ = pair.take()
    assert [e.stream_id for e in ours if isinstance(e, ev.RequestReceived)] == sids
    assert pair.ours.open_inbound == 60
    for sid in sids:
        assert body_of(ours, sid) == b"%d-0;%d-1;%d-2;" % (sid, sid, sid)
    for sid in reversed(sids):
        pair.ours.send_headers(sid, RESPONSE)
        pair.ours.send_data(sid, b"r%d" % sid, end_stream=True)
    pair.pump()
    _, ref = pair.take()
    assert [e.stream_id for e in ref if isinstance(e, h2.events.StreamEnded)] == list(reversed(sids))
    assert all(body_of(ref, sid) == b"r%d" % sid for sid in sids)
    assert pair.ours.open_inbound == 0 and pair.ours.streams == {}


def _send_from_ref(pair: Pair, sid: int, body: bytes) -> None:
    """h2 sends ``body`` on ``sid`` as fast as its windows allow; stalls fail the test."""
    sent = 0
    while sent < len(body):
        size = min(pair.ref.local_flow_control_window(sid), pair.ref.max_outbound_frame_size, len(body) - sent)
        assert size > 0, f"the sender stalled after {sent} bytes"
        pair.ref.send_data(sid, body[sent:sent + size], end_stream=sent + size == len(body))
        sent += size
        pair.pump()


def test_server_large_upload_flows_on_acknowledged_windows() -> None:
    """2 MiB through 64 KiB windows: ours gives acknowledged bytes back in WINDOW_UPDATEs (connection and
    stream) of at least half a window, and the upload never stalls."""
    body = random.Random(1).randbytes(2 << 20)
    pair = Pair(ours_client=False)
    pair.take()
    pair.take_frames()
    pair.ref.send_headers(1, POST)
    _send_from_ref(pair, 1, body)
    ours, _ = pair.take()
    assert body_of(ours, 1) == body and kinds(ours)[-1] == "StreamEnded"
    updates = [f for f in pair.take_frames() if f.kind == WINDOW_UPDATE]
    assert {f.sid for f in updates} == {0, 1}
    assert all(int.from_bytes(f.payload, "big") >= 65535 // 2 for f in updates)
    assert sum(int.from_bytes(f.payload, "big") for f in updates if f.sid == 0) > len(body) - 65535


def test_server_without_acknowledgements_the_sender_stops_at_the_window() -> None:
    pair = Pair(ours_client=False, auto_ack=False)
    pair.take()
    pair.ref.send_headers(1, POST)
    pair.pump()
    body = b"x" * 100_000
    sent = 0
    while pair.ref.local_flow_control_window(1):
        size = min(pair.ref.local_flow_control_window(1), 16384)
        pair.ref.send_data(1, body[sent:sent + size])
        sent += size
        pair.pump()
    ours, _ = pair.take()
    assert sent == len(body_of(ours, 1)) == 65535
    assert pair.ours.conn_recv_window == 0 and pair.ours.streams[1].recv_window == 0
    with pytest.raises(h2.exceptions.FlowControlError):
        pair.ref.send_data(1, b"y")
    assert not [f for f in pair.take_frames() if f.kind == WINDOW_UPDATE]
    # Acknowledging what was read reopens both windows, in updates of at least half a window: what is
    # left over (under half) waits for the next acknowledgement.
    for event in ours:
        if isinstance(event, ev.DataReceived):
            pair.ours.acknowledge_received_data(event.flow_controlled_length, 1)
    pair.pump()
    updates = [f for f in pair.take_frames() if f.kind == WINDOW_UPDATE]
    assert sorted(f.sid for f in updates) == [0, 1]
    assert pair.ours.conn_recv_unacked <= 65535 // 2
    assert pair.ref.local_flow_control_window(1) == 65535 - pair.ours.conn_recv_unacked > 65535 // 2


def test_server_large_download_flows_and_stops_without_acks() -> None:
    body = random.Random(2).randbytes(1 << 20)
    for acked in (True, False):
        pair = Pair(ours_client=False, auto_ack=acked)
        pair.ref.send_headers(1, REQUEST, end_stream=True)
        pair.pump()
        pair.take()
        pair.ours.send_headers(1, RESPONSE)
        sent = 0
        while sent < len(body):
            size = min(pair.ours.local_flow_control_window(1), pair.ours.max_outbound_frame_size, len(body) - sent)
            if size <= 0:
                break
            pair.ours.send_data(1, body[sent:sent + size], end_stream=sent + size == len(body))
            sent += size
            pair.pump()
        _, ref = pair.take()
        if acked:
            assert body_of(ref, 1) == body and kinds(ref)[-1] == "StreamEnded"
        else:
            assert sent == len(body_of(ref, 1)) == 65535
            with pytest.raises(FlowControlError):
                pair.ours.send_data(1, b"z")


def test_initial_window_size_change_adjusts_open_streams() -> None:
    """SETTINGS_INITIAL_WINDOW_SIZE moves every open stream's send window by the difference, even below
    zero; a WINDOW_UPDATE then brings it back."""
    pair = Pair(ours_client=False, auto_ack=False)
    pair.ref.send_headers(1, REQUEST, end_stream=True)
    pair.ref.send_headers(3, REQUEST, end_stream=True)
    pair.pump()
    pair.ours.send_headers(1, RESPONSE)
    pair.ours.send_data(1, b"a" * 1500)
    pair.pump()
    pair.ref.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    pair.pump()
    assert pair.ours.streams[1].send_window == -500
    assert pair.ours.streams[3].send_window == 1000
    assert pair.ours.local_flow_control_window(3) == 1000
    with pytest.raises(FlowControlError):
        pair.ours.send_data(1, b"b")
    pair.ref.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100_000})
    pair.pump()
    assert pair.ours.streams[1].send_window == 98_500
    # The connection window (65535 - 1500) is not a stream window: SETTINGS leave it alone.
    assert pair.ours.local_flow_control_window(1) == 65535 - 1500


def _header_frames(pair: Pair) -> list[int]:
    return [f.kind for f in pair.take_frames() if f.kind in (HEADERS, CONTINUATION)]


def test_max_frame_size_decides_continuation() -> None:
    """A 40 KB response head goes as HEADERS + CONTINUATIONs at the default 16384, in one HEADERS frame
    once the peer allows 65536; h2 reads both."""
    big = [*RESPONSE, *((b"x-big-%d" % i, b"v" * 10_000) for i in range(4))]
    pair = Pair(ours_client=False)
    pair.ref.send_headers(1, REQUEST, end_stream=True)
    pair.ref.send_headers(3, REQUEST, end_stream=True)
    pair.pump()
    pair.take_frames()
    pair.ours.send_headers(1, big, end_stream=True)
    pair.pump()
    assert _header_frames(pair) == [HEADERS, CONTINUATION, CONTINUATION]
    pair.ref.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 65536})
    pair.pump()
    assert pair.ours.max_outbound_frame_size == 65536
    pair.take_frames()
    pair.ours.send_headers(3, big, end_stream=True)
    pair.pump()
    assert _header_frames(pair) == [HEADERS]
    _, ref = pair.take()
    assert [e.headers for e in ref if isinstance(e, h2.events.ResponseReceived)] == [big, big]


def test_header_table_size_setting_sends_a_size_update_h2_accepts() -> None:
    pair = Pair(ours_client=False)
    pair.ref.send_headers(1, REQUEST, end_stream=True)
    pair.ref.send_headers(3, REQUEST, end_stream=True)
    pair.ref.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    pair.pump()
    pair.take_frames()
    pair.ours.send_headers(1, RESPONSE, end_stream=True)
    pair.ours.send_headers(3, RESPONSE, end_stream=True)
    pair.pump()
    first, second = (f for f in pair.take_frames() if f.kind == HEADERS)
    assert first.payload[:1] == b"\x20" and second.payload[:1] != b"\x20"
    _, ref = pair.take()
    assert [e.headers for e in ref if isinstance(e, h2.events.ResponseReceived)] == [RESPONSE, RESPONSE]


def test_ping_is_acknowledged() -> None:
    pair = Pair(ours_client=False)
    pair.take()
    pair.ref.ping(b"8 bytes!")
    pair.pump()
    ours, ref = pair.take()
    assert kinds(ours) == ["PingReceived"]
    assert [e.ping_data for e in ref if isinstance(e, h2.events.PingAckReceived)] == [b"8 bytes!"]


def test_goaway_from_ours_names_the_last_stream() -> None:
    pair = Pair(ours_client=False)
    for sid in (1, 3, 5):
        pair.ref.send_headers(sid, REQUEST, end_stream=True)
    pair.pump()
    pair.take()
    pair.ours.close_connection(ENHANCE_YOUR_CALM)
    pair.pump()
    _, ref = pair.take()
    [term] = [e for e in ref if isinstance(e, h2.events.ConnectionTerminated)]
    assert term.last_stream_id == 5 and term.error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_goaway_from_h2_reaches_ours_as_server() -> None:
    pair = Pair(ours_client=False)
    pair.ref.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    pair.take()
    pair.ref.close_connection(h2.errors.ErrorCodes.PROTOCOL_ERROR, additional_data=b"why")
    pair.pump()
    ours, _ = pair.take()
    assert [(type(e).__name__, e.error_code, e.last_stream_id) for e in ours] == [
        ("ConnectionTerminated", PROTOCOL_ERROR, 0)]
    assert pair.ours.goaway_received
    # The stream in flight may still be answered.
    pair.ours.send_headers(1, RESPONSE, end_stream=True)
    assert pair.ours.streams == {}


def test_rst_stream_both_ways() -> None:
    pair = Pair(ours_client=False)
    for sid in (1, 3, 5):
        pair.ref.send_headers(sid, POST)
    pair.pump()
    pair.take()
    pair.ref.reset_stream(1, h2.errors.ErrorCodes.CANCEL)
    pair.ours.reset_stream(3, REFUSED_STREAM)
    pair.pump()
    ours, ref = pair.take()
    assert [(e.stream_id, e.error_code, e.remote) for e in ours] == [(1, 8, True)]
    assert [(e.stream_id, e.error_code) for e in ref if isinstance(e, h2.events.StreamReset)] == [(3, 7)]
    assert not pair.ours.stream_is_open(1) and not pair.ours.stream_is_open(3)
    with pytest.raises(StreamClosedError):
        pair.ours.send_headers(1, RESPONSE)
    # Stream 5 is untouched: its body still arrives and its response still goes out.
    pair.ref.send_data(5, b"still here", end_stream=True)
    pair.ours.send_headers(5, RESPONSE, end_stream=True)
    pair.pump()
    ours, ref = pair.take()
    assert body_of(ours, 5) == b"still here"
    assert kinds(ref) == ["ResponseReceived", "StreamEnded"]
    assert pair.ours.open_inbound == 0


# -- ours as the client, h2 as the server ----------------------------------------------------------

def _client() -> Pair:
    pair = Pair(ours_client=True, ours_settings=CLIENT_SETTINGS)
    pair.take()
    return pair


def test_client_request_and_response() -> None:
    pair = _client()
    sid = pair.ours.get_next_available_stream_id()
    assert sid == 1
    pair.ours.send_headers(sid, REQUEST, end_stream=True)
    pair.pump()
    _, ref = pair.take()
    assert kinds(ref) == ["RequestReceived", "StreamEnded"] and ref[0].headers == REQUEST
    pair.ref.send_headers(1, [(b":status", b"100")])
    pair.ref.send_headers(1, [(b":status", b"200"), (b"content-length", b"3")])
    pair.ref.send_data(1, b"abc", end_stream=True)
    pair.pump()
    ours, _ = pair.take()
    # The 100 (informational) head is not reported.
    assert kinds(ours) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert ours[0].headers == [(b":status", b"200"), (b"content-length", b"3")] and ours[1].data == b"abc"
    assert pair.ours.get_next_available_stream_id() == 3 and pair.ours.streams == {}


def test_client_body_and_trailers_both_ways() -> None:
    pair = _client()
    pair.ours.send_headers(1, [*POST, (b"te", b"trailers")])
    pair.ours.send_data(1, b"request body")
    pair.ours.send_headers(1, TRAILERS, end_stream=True)
    pair.pump()
    _, ref = pair.take()
    assert kinds(ref) == ["RequestReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert body_of(ref, 1) == b"request body" and ref[2].headers == TRAILERS
    pair.ref.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    pair.ref.send_data(1, b"\x00\x00\x00\x00\x01z")
    pair.ref.send_headers(1, TRAILERS, end_stream=True)
    pair.pump()
    ours, _ = pair.take()
    assert kinds(ours) == ["ResponseReceived", "DataReceived", "TrailersReceived", "StreamEnded"]
    assert ours[2].headers == TRAILERS


def test_client_many_streams_and_the_peers_concurrency_limit() -> None:
    pair = _client()
    pair.ref.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 20})
    pair.pump()
    assert pair.ours.remote_max_concurrent_streams == 20
    sids = []
    for _ in range(20):
        sid = pair.ours.get_next_available_stream_id()
        pair.ours.send_headers(sid, [*POST[:3], (b":authority", b"s%d" % sid)])
        sids.append(sid)
    with pytest.raises(H2Error, match="concurrent stream limit"):
        pair.ours.send_headers(pair.ours.get_next_available_stream_id(), REQUEST, end_stream=True)
    for sid in sids:
        pair.ours.send_data(sid, b"q%d" % sid, end_stream=True)
    pair.pump()
    _, ref = pair.take()
    assert [e.stream_id for e in ref if isinstance(e, h2.events.RequestReceived)] == sids
    for sid in reversed(sids):
        pair.ref.send_headers(sid, [(b":status", b"200")])
        pair.ref.send_data(sid, b"a%d" % sid, end_stream=True)
    pair.pump()
    ours, _ = pair.take()
    assert all(body_of(ours, sid) == b"a%d" % sid for sid in sids)
    assert pair.ours.open_outbound == 0
    pair.ours.send_headers(pair.ours.get_next_available_stream_id(), REQUEST, end_stream=True)


def test_client_large_bodies_both_ways() -> None:
    """1 MiB up and 1 MiB down through h2's 64 KiB and our 256 KiB stream windows."""
    up, down = random.Random(3).randbytes(1 << 20), random.Random(4).randbytes(1 << 20)
    pair = _client()
    pair.ours.send_headers(1, POST)
    sent = 0
    while sent < len(up):
        size = min(pair.ours.local_flow_control_window(1), pair.ours.max_outbound_frame_size, len(up) - sent)
        assert size > 0, f"our sender stalled after {sent} bytes"
        pair.ours.send_data(1, up[sent:sent + size], end_stream=sent + size == len(up))
        sent += size
        pair.pump()
    pair.ref.send_headers(1, [(b":status", b"200")])
    _send_from_ref(pair, 1, down)
    ours, ref = pair.take()
    assert body_of(ref, 1) == up and body_of(ours, 1) == down
    assert kinds(ours)[-1] == "StreamEnded"


def test_client_goaway_from_the_server() -> None:
    pair = _client()
    for _ in range(3):
        pair.ours.send_headers(pair.ours.get_next_available_stream_id(), REQUEST, end_stream=True)
    pair.pump()
    pair.ref.close_connection(h2.errors.ErrorCodes.NO_ERROR, last_stream_id=3)
    pair.pump()
    ours, _ = pair.take()
    assert [(e.error_code, e.last_stream_id) for e in ours] == [(0, 3)]
    with pytest.raises(H2Error, match="GOAWAY"):
        pair.ours.send_headers(pair.ours.get_next_available_stream_id(), REQUEST, end_stream=True)


def test_client_goaway_from_ours() -> None:
    pair = _client()
    pair.ours.send_headers(1, REQUEST, end_stream=True)
    pair.pump()
    pair.ours.close_connection()
    pair.pump()
    _, ref = pair.take()
    [term] = [e for e in ref if isinstance(e, h2.events.ConnectionTerminated)]
    # A client names the last stream the server opened: none (no push).
    assert (term.error_code, term.last_stream_id) == (0, 0)


def test_client_rst_stream_both_ways() -> None:
    pair = _client()
    for _ in range(2):
        pair.ours.send_headers(pair.ours.get_next_available_stream_id(), POST)
    pair.pump()
    pair.ours.reset_stream(1)
    pair.ref.reset_stream(3, h2.errors.ErrorCodes.INTERNAL_ERROR)
    pair.pump()
    ours, ref = pair.take()
    assert [(e.stream_id, e.error_code) for e in ref if isinstance(e, h2.events.StreamReset)] == [(1, 8)]
    assert [(e.stream_id, e.error_code, e.remote) for e in ours] == [(3, 2, True)]
    assert pair.ours.open_outbound == 0


def test_client_responses_without_content_despite_content_length() -> None:
    """RFC 9113 8.1.1: a response to HEAD, and a 304, may declare a content-length and carry no content
    (h2 accepts both)."""
    pair = _client()
    pair.ours.send_headers(1, [(b":method", b"HEAD"), *REQUEST[1:]], end_stream=True)
    pair.ours.send_headers(3, [*REQUEST, (b"if-none-match", b'"v1"')], end_stream=True)
    pair.ours.send_headers(5, [(b":method", b"HEAD"), *REQUEST[1:]], end_stream=True)
    pair.pump()
    pair.ref.send_headers(1, [(b":status", b"200"), (b"content-length", b"1234")], end_stream=True)
    pair.ref.send_headers(3, [(b":status", b"304"), (b"content-length", b"1234")], end_stream=True)
    pair.ref.send_headers(5, [(b":status", b"200"), (b"content-length", b"1234")])
    pair.ref.send_data(5, b"", end_stream=True)
    pair.pump()
    ours, _ = pair.take()
    assert [(type(e).__name__, e.stream_id) for e in ours] == [
        ("ResponseReceived", 1), ("StreamEnded", 1), ("ResponseReceived", 3), ("StreamEnded", 3),
        ("ResponseReceived", 5), ("DataReceived", 5), ("StreamEnded", 5)]
