"""Generated exchanges between our HTTP/2 connection and h2's, in memory: whatever h2 sends (header
blocks of any size, so CONTINUATION; padding; priorities; bodies in any chunks; trailers), cut into
pieces at random places, ours must report exactly; whatever ours sends, h2 must read back exactly."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import h2.events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshbox.proxy import h2_events as ev
from meshbox.proxy.h2_events import ENABLE_PUSH, INITIAL_WINDOW_SIZE
from proxy.tests.h2_wire import Pair

_TOKEN = st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=16).map(str.encode)
_VALUE = st.binary(max_size=40).map(lambda b: bytes(0x21 + c % 94 for c in b))
# Now and then one long field, so that the header block needs CONTINUATION (h2 Huffman-codes it, slowly).
_LONG = st.sampled_from([[], [], [], [(b"x-long", b"v" * 20_000)]])
_FIELDS = st.builds(lambda short, long: short + long, st.lists(st.tuples(_TOKEN.map(lambda t: b"x-" + t), _VALUE),
                                                                max_size=6), _LONG)
_SETTINGS = settings(max_examples=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

Piece = tuple[int, Callable[[], None]]  # (flow-controlled size, the send)


@st.composite
def _message(draw: Any) -> dict[str, Any]:
    size = draw(st.integers(0, 50_000))
    body = random.Random(size).randbytes(size)
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=6)))
    chunks = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    # Each send fits one frame (with its padding).
    frames = [c[at:at + 16000] for c in chunks if c for at in range(0, len(c), 16000)]
    return {"fields": draw(_FIELDS), "body": body, "frames": frames, "pad": draw(st.integers(0, 255)),
            "trailers": draw(st.one_of(st.none(), _FIELDS.filter(bool))), "priority": draw(st.booleans())}


def _pieces(msg: dict[str, Any], head: Callable[[bool], None], data: Callable[[bytes, bool, int], None],
            trailers: Callable[[Any], None]) -> list[Piece]:
    """A message as sends: its head, its DATA frames (END_STREAM on the last unless trailers follow)."""
    frames = msg["frames"] or ([b""] if msg["trailers"] else [])
    pieces: list[Piece] = [(0, lambda: head(not frames))]
    for n, chunk in enumerate(frames):
        end = n == len(frames) - 1 and not msg["trailers"]
        pad = msg["pad"]
        pieces.append((len(chunk) + (pad + 1 if pad else 0), lambda c=chunk, end=end, pad=pad: data(c, end, pad)))
    if msg["trailers"]:
        pieces.append((0, lambda: trailers(msg["trailers"])))
    return pieces


def _send_all(pair: Pair, window: Callable[[int], int], sends: list[tuple[int, list[Piece]]]) -> None:
    """Send the streams' pieces round-robin, each when the windows allow it, pumping as it goes."""
    for _ in range(100_000):
        if not sends:
            return
        sid, pieces = sends.pop(0)
        size, send = pieces[0]
        if size and window(sid) < size:
            pair.pump()
        else:
            send()
            pieces.pop(0)
        if pieces:
            sends.append((sid, pieces))
    raise AssertionError("the exchange never finished")


@_SETTINGS
@given(messages=st.lists(_message(), min_size=1, max_size=5), cuts=st.lists(st.integers(1, 40), max_size=20))
def test_requests_from_h2_arrive_exactly(messages: list[dict[str, Any]], cuts: list[int]) -> None:
    pair = Pair(ours_client=False, cuts=cuts)
    pair.take()
    ref = pair.ref
    sends = []
    for index, msg in enumerate(messages):
        sid = 2 * index + 1
        head = [(b":method", b"POST"), (b":scheme", b"https"), (b":path", b"/%d" % sid), (b":authority", b"a"),
                *msg["fields"]]
        # Only on a head that fits one frame: h2 forgets the 5 priority bytes when it splits a block.
        small = sum(len(n) + len(v) for n, v in head) < 15_000
        priority = {"priority_weight": 42, "priority_depends_on": 0} if msg["priority"] and small else {}
        sends.append((sid, _pieces(
            msg,
            lambda end, sid=sid, head=head, priority=priority: ref.send_headers(sid, head, end, **priority),
            lambda chunk, end, pad, sid=sid: ref.send_data(sid, chunk, end, pad_length=pad or None),
            lambda fields, sid=sid: ref.send_headers(sid, fields, end_stream=True))))
    _send_all(pair, ref.local_flow_control_window, sends)
    pair.pump()
    ours, _ = pair.take()
    _assert_received(ours, messages, ev.RequestReceived, 4)
    assert pair.ours.streams.keys() == {2 * i + 1 for i in range(len(messages))}


@_SETTINGS
@given(messages=st.lists(_message(), min_size=1, max_size=5))
def test_responses_from_ours_arrive_exactly(messages: list[dict[str, Any]]) -> None:
    """Ours as the server answers h2's requests: a head of any size, the body in the given frames,
    trailers. (Ours sends no padding: the pad is dropped.)"""
    pair = Pair(ours_client=False)
    for index in range(len(messages)):
        pair.ref.send_headers(2 * index + 1, [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/"),
                                              (b":authority", b"a")], end_stream=True)
    pair.pump()
    pair.take()
    ours = pair.ours
    sends = []
    for index, msg in enumerate(messages):
        sid = 2 * index + 1
        unpadded = {**msg, "pad": 0}
        sends.append((sid, _pieces(
            unpadded,
            lambda end, sid=sid, head=[(b":status", b"200"), *msg["fields"]]: ours.send_headers(sid, head, end),
            lambda chunk, end, pad, sid=sid: ours.send_data(sid, chunk, end),
            lambda fields, sid=sid: ours.send_headers(sid, fields, True))))
    _send_all(pair, ours.local_flow_control_window, sends)
    pair.pump()
    _, ref = pair.take()
    for index, msg in enumerate(messages):
        sid = 2 * index + 1
        theirs = [e for e in ref if getattr(e, "stream_id", None) == sid]
        assert [e.headers for e in theirs if isinstance(e, h2.events.ResponseReceived)] == [
            [(b":status", b"200"), *msg["fields"]]]
        assert b"".join(e.data for e in theirs if isinstance(e, h2.events.DataReceived)) == msg["body"]
        assert [e.headers for e in theirs if isinstance(e, h2.events.TrailersReceived)] == (
            [msg["trailers"]] if msg["trailers"] else [])
        assert isinstance(theirs[-1], h2.events.StreamEnded)
    assert ours.streams == {}


@_SETTINGS
@given(messages=st.lists(_message(), min_size=1, max_size=5), cuts=st.lists(st.integers(1, 40), max_size=20))
def test_responses_from_h2_reach_ours_as_client_exactly(messages: list[dict[str, Any]], cuts: list[int]) -> None:
    """Ours as the client (the proxy's upstream side): its requests, then h2's responses with padding,
    heads of any size and trailers, cut anywhere."""
    pair = Pair(ours_client=True, ours_settings={INITIAL_WINDOW_SIZE: 256 * 1024, ENABLE_PUSH: 0}, cuts=cuts)
    ref = pair.ref
    sends = []
    for index, msg in enumerate(messages):
        sid = pair.ours.get_next_available_stream_id()
        assert sid == 2 * index + 1
        pair.ours.send_headers(sid, [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                                     (b":authority", b"a")], end_stream=True)
        sends.append((sid, _pieces(
            msg,
            lambda end, sid=sid, head=[(b":status", b"200"), *msg["fields"]]: ref.send_headers(sid, head, end),
            lambda chunk, end, pad, sid=sid: ref.send_data(sid, chunk, end, pad_length=pad or None),
            lambda fields, sid=sid: ref.send_headers(sid, fields, end_stream=True))))
    pair.pump()
    pair.take()
    _send_all(pair, ref.local_flow_control_window, sends)
    pair.pump()
    ours, _ = pair.take()
    _assert_received(ours, messages, ev.ResponseReceived, 1)
    assert pair.ours.streams == {}


def _assert_received(ours: list[Any], messages: list[dict[str, Any]], head: type, pseudo: int) -> None:
    """Each message arrived whole on its stream (1, 3, 5, ...): its head (after ``pseudo`` pseudo-header
    fields), its body, its trailers if any, then the end."""
    for index, msg in enumerate(messages):
        sid = 2 * index + 1
        mine = [e for e in ours if getattr(e, "stream_id", None) == sid]
        assert isinstance(mine[0], head) and mine[0].headers[pseudo:] == msg["fields"]
        assert b"".join(e.data for e in mine if isinstance(e, ev.DataReceived)) == msg["body"]
        assert [e.headers for e in mine if isinstance(e, ev.TrailersReceived)] == (
            [msg["trailers"]] if msg["trailers"] else [])
        assert isinstance(mine[-1], ev.StreamEnded)
