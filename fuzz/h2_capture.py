"""The HTTP/2 side of the capture backend: an h2c server (the ``h2`` package with its own header checks
off, so it records exactly what arrived) that records each request stream the proxy completes, with
its header list, body length and trailers checked against RFC 9113, and answers as ``hostile_h2``
says. A stream the proxy reset before its end is not a request that reached the backend."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

from .h2_rules import request_problems
from .hostile_h2 import H2Answer, answer_h2

if TYPE_CHECKING:
    from .capture_backend import CaptureBackend

Headers = list[tuple[bytes, bytes]]


@dataclass
class _Stream:
    headers: Headers
    body_len: int = 0
    trailers: Headers | None = None
    out: bytes = b""  # body bytes waiting for flow-control window
    out_trailers: Headers | None = None
    out_reset: int | None = None
    answered: bool = False  # the answer is decided (what is left of it waits in out*)


@dataclass
class H2Upstream:
    """One upstream HTTP/2 connection from the proxy."""

    backend: CaptureBackend
    conn_no: int
    transport: asyncio.Transport
    h2: H2Connection = field(init=False)
    streams: dict[int, _Stream] = field(default_factory=dict)
    index: int = 0

    def __post_init__(self) -> None:
        self.h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None,
                                               validate_inbound_headers=False, normalize_inbound_headers=False,
                                               validate_outbound_headers=False))
        self.h2.local_settings.max_concurrent_streams = 1000
        self.h2.local_settings.max_header_list_size = 1 << 20
        self.h2.initiate_connection()
        self.h2.update_settings({SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20})
        self.h2.increment_flow_control_window(1 << 24)
        self._flush()

    def receive(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except H2Error as exc:
            self.backend.stats.parse_errors.append((self.conn_no, f"HTTP/2: {type(exc).__name__}: {exc}"))
            self._flush()
            self.transport.close()
            return
        for ev in events:
            self._event(ev)
        for sid in list(self.streams):
            self._send_pending(sid)
        self._flush()

    def _event(self, ev: object) -> None:
        if isinstance(ev, RequestReceived):
            self.streams[ev.stream_id] = _Stream(list(ev.headers))
        elif isinstance(ev, DataReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.body_len += len(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, TrailersReceived):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                st.trailers = list(ev.headers)
        elif isinstance(ev, StreamEnded):
            st = self.streams.get(ev.stream_id)
            if st is not None:
                self._complete(ev.stream_id, st)
        elif isinstance(ev, StreamReset):
            self.streams.pop(ev.stream_id, None)
        elif isinstance(ev, ConnectionTerminated):
            self.transport.close()
        elif isinstance(ev, WindowUpdated):
            pass  # pending bodies are retried after every batch of events

    def _complete(self, sid: int, st: _Stream) -> None:
        from .capture_backend import Received

        fields = dict(st.headers)
        ids = tuple(v.decode("latin-1") for n, v in st.headers if n == b"x-request-id")
        rid = ids[0] if ids else None
        method, path = fields.get(b":method", b""), fields.get(b":path", b"")
        problems = tuple(request_problems(st.headers, st.body_len, st.trailers))
        self.backend.received.append(Received(rid, method, path, self.conn_no, self.index, ids, "h2", problems))
        self.index += 1
        grpc = fields.get(b"content-type", b"").startswith(b"application/grpc")
        answer = answer_h2(path, (rid or "-").encode("latin-1"), method == b"HEAD", grpc)
        if answer.hang:
            return
        if answer.delay:
            asyncio.get_running_loop().call_later(answer.delay, self._answer_later, sid, st, answer)
            return
        self._answer(sid, st, answer)

    def _answer_later(self, sid: int, st: _Stream, answer: H2Answer) -> None:
        if self.streams.get(sid) is st and not self.transport.is_closing():
            self._answer(sid, st, answer)
            self._flush()

    def _answer(self, sid: int, st: _Stream, answer: H2Answer) -> None:
        try:
            if answer.headers is not None:
                end = not answer.body and answer.trailers is None and answer.reset is None
                self.h2.send_headers(sid, answer.headers, end_stream=end)
            st.out, st.out_trailers, st.out_reset = answer.body, answer.trailers, answer.reset
            st.answered = True
            self._send_pending(sid)
        except H2Error:
            self.streams.pop(sid, None)  # the proxy reset it meanwhile

    def _send_pending(self, sid: int) -> None:
        st = self.streams.get(sid)
        if st is None or not st.answered:
            return
        try:
            while st.out:
                room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                if room <= 0:
                    return
                chunk, st.out = st.out[:room], st.out[room:]
                self.h2.send_data(sid, chunk, end_stream=not st.out and st.out_trailers is None
                                  and st.out_reset is None)
            if st.out_trailers is not None:
                self.h2.send_headers(sid, st.out_trailers, end_stream=True)
                st.out_trailers = None
            elif st.out_reset is not None:
                self.h2.reset_stream(sid, st.out_reset)
                st.out_reset = None
        except H2Error:
            pass  # the stream is gone (reset by the proxy): nothing more to send
        if not st.out and st.out_trailers is None and st.out_reset is None:
            self.streams.pop(sid, None)

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.transport.is_closing():
            self.transport.write(data)
