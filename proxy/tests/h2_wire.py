"""In-memory HTTP/2 for the codec tests: our ``H2Connection`` wired to the ``h2`` package's connection
(the reference peer) with no socket between them, and raw frames built and split by hand."""

from __future__ import annotations

from typing import Any, NamedTuple

import h2.config
import h2.connection
import h2.events

from meshbox.proxy import h2_events as ev
from meshbox.proxy.h2_connection import H2Connection
from meshbox.proxy.h2_frames import PREFACE, SETTINGS, frame
from meshbox.proxy.hpack import HpackEncoder

REQUEST = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"svc.test")]
POST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/upload"), (b":authority", b"svc.test")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain")]


class Frame(NamedTuple):
    kind: int
    flags: int
    sid: int
    payload: bytes


def split_frames(data: bytes) -> list[Frame]:
    """The frames in ``data`` (after a client preface, if it starts with one); every byte must belong to one."""
    if data.startswith(PREFACE):
        data = data[len(PREFACE):]
    out = []
    pos = 0
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 3], "big")
        assert pos + 9 + size <= len(data), "a frame is cut off"
        sid = int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF
        out.append(Frame(data[pos + 3], data[pos + 4], sid, data[pos + 9:pos + 9 + size]))
        pos += 9 + size
    return out


def block(headers: list[tuple[bytes, bytes]]) -> bytes:
    """A header block for ``headers`` with no dynamic table state (each call stands alone)."""
    return HpackEncoder().encode(headers)


def started_server(settings: dict[int, int] | None = None) -> H2Connection:
    """Our connection as a server, past the client's preface and SETTINGS, its output drained."""
    conn = H2Connection(False, settings or {})
    conn.initiate_connection()
    assert conn.receive_data(PREFACE + frame(SETTINGS, 0, 0)) != []
    conn.data_to_send()
    return conn


def started_client(settings: dict[int, int] | None = None) -> H2Connection:
    """Our connection as a client, past the server's SETTINGS, its output drained."""
    conn = H2Connection(True, settings or {})
    conn.initiate_connection()
    assert conn.receive_data(frame(SETTINGS, 0, 0)) != []
    conn.data_to_send()
    return conn


class Pair:
    """Ours and h2 on one in-memory connection. ``pump`` moves bytes both ways until both are quiet,
    collecting each side's events and the frames ours sent; with ``auto_ack`` each side gives received
    DATA back to the other's windows as soon as it arrives."""

    def __init__(self, ours_client: bool, ours_settings: dict[int, int] | None = None, auto_ack: bool = True,
                 cuts: list[int] | None = None) -> None:
        self.ours = H2Connection(ours_client, ours_settings or {})
        # Ours reads what h2 sent in pieces of these sizes (then the rest at once).
        self.cuts = cuts or []
        config = h2.config.H2Configuration(client_side=not ours_client, header_encoding=None)
        self.ref = h2.connection.H2Connection(config)
        self.auto_ack = auto_ack
        self.ours_events: list[Any] = []
        self.ref_events: list[Any] = []
        self.ours_frames: list[Frame] = []
        self.ours.initiate_connection()
        self.ref.initiate_connection()
        self.pump()

    def pump(self) -> None:
        for _ in range(10_000):
            out = self.ours.data_to_send()
            if out:
                self.ours_frames += split_frames(out)
                for event in self.ref.receive_data(out):
                    self.ref_events.append(event)
                    if self.auto_ack and isinstance(event, h2.events.DataReceived):
                        self.ref.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            back = self.ref.data_to_send()
            if back:
                for event in self._feed_ours(back):
                    self.ours_events.append(event)
                    if self.auto_ack and isinstance(event, ev.DataReceived):
                        self.ours.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if not out and not back:
                return
        raise AssertionError("the two connections never went quiet")

    def _feed_ours(self, data: bytes) -> list[Any]:
        events = []
        at = 0
        for size in self.cuts:
            if at >= len(data):
                break
            events += self.ours.receive_data(data[at:at + size])
            at += size
        return events + self.ours.receive_data(data[at:])

    def take(self) -> tuple[list[Any], list[Any]]:
        """(events ours reported, events h2 reported) since the last call."""
        ours, ref = self.ours_events, self.ref_events
        self.ours_events, self.ref_events = [], []
        return ours, ref

    def take_frames(self) -> list[Frame]:
        frames, self.ours_frames = self.ours_frames, []
        return frames


def kinds(events: list[Any]) -> list[str]:
    return [type(e).__name__ for e in events]


def body_of(events: list[Any], sid: int) -> bytes:
    return b"".join(e.data for e in events if type(e).__name__ == "DataReceived" and e.stream_id == sid)
