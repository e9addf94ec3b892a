"""The HTTP/2 regression corpus: minimal scripts for what the fuzz found, each written in one write right
after connecting (so the proxy reads it all at once, as under load), judged by the same oracle. Those
naming a ``known_bugs`` entry show that bug until it is fixed."""

from __future__ import annotations

from dataclasses import dataclass

from . import h2_frames as f
from .dialects import Script
from .h2_client import PREAMBLE
from .h2_requests import H2Template, base_headers
from .wire import Expect, Request


@dataclass(frozen=True)
class Regression:
    name: str
    script: Script
    known_bug: str | None  # the known_bugs entry it shows, None: it must pass


def _request(sid: int, rid: str, mutation: str, expect: Expect, frames: list[bytes], opens: bool = True) -> Request:
    return Request(rid, b"".join(frames), expect, mutation, sid=sid, frames=tuple(frames), opens=opens)


def _script(index: int, requests: list[Request]) -> Script:
    return Script(0, index, "h2", requests, [PREAMBLE + b"".join(r.data for r in requests)])


def _valid(sid: int, rid: str) -> Request:
    t = H2Template(sid, base_headers(rid))
    return t.request(rid, Expect.BACKEND, "valid:get")


def _rapid_reset_on_first_read() -> Script:
    frames = [f.frame(f.HEADERS, f.END_HEADERS | f.END_STREAM, sid, f.header_block(base_headers(f"fz0-9000-{sid}")))
              + f.rst_stream(sid, f.CANCEL) for sid in range(1, 240, 2)]
    return _script(9000, [_request(239, "fz0-9000-239", "rapid_reset", Expect.ANY, frames, opens=False)])


def _ping_flood_on_first_read() -> Script:
    return _script(9001, [_request(1, "fz0-9001-0", "ping_flood", Expect.ANY, [f.ping() * 150], opens=False)])


def _ping_before_settings() -> Script:
    data = f.PREFACE + f.ping()
    return Script(0, 9005, "h2", [Request("fz0-9005-p", data, Expect.ANY, "bad_preface:ping_first", opens=False)],
                  [data])


def _header_edit(index: int, name: bytes, value: bytes, mutation: str) -> Script:
    rid = f"fz0-{index}-0"
    t = H2Template(1, [(n, value if n == name else v) for n, v in base_headers(rid)])
    return _script(index, [t.request(rid, Expect.ANY, mutation), _valid(3, f"fz0-{index}-1")])


def _window_update_zero() -> Script:
    """WINDOW_UPDATE 0 on a stream (a stream error, RFC 9113 §6.9) with a well-formed stream after it:
    the proxy may end the whole connection (today it does: GOAWAY PROTOCOL_ERROR), but both streams
    must be settled and the connection closed."""
    t = H2Template(1, base_headers("fz0-9010-0"), end_on_headers=False)
    bad = _request(1, "fz0-9010-0", "window_update", Expect.ANY,
                   [*t.frames()[:1], f.window_update(1, 0), f.frame(f.DATA, f.END_STREAM, 1, b"w")])
    return _script(9010, [bad, _valid(3, "fz0-9010-1")])


REGRESSIONS = (
    Regression("rapid-reset-on-first-read", _rapid_reset_on_first_read(), None),
    Regression("ping-flood-on-first-read", _ping_flood_on_first_read(), None),
    Regression("ping-before-settings", _ping_before_settings(), None),
    Regression("space-in-path", _header_edit(9002, b":path", b"/v/a b", "space_in_path"), None),
    Regression("method-not-token", _header_edit(9003, b":method", b"G T", "bad_method"), None),
    Regression("crlf-in-path", _header_edit(9004, b":path", b"/v/x HTTP/1.1\r\nx-fz-smuggled: 1\r\nx: y",
                                            "inject_crlf_nul"), None),
    Regression("window-update-zero", _window_update_zero(), None),
)
