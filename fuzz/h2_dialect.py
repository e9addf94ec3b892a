"""HTTP/2 (h2c with prior knowledge) connection scripts: many well-formed request streams multiplexed
on one connection, often followed by a broken one and more streams, written whole, per stream, frame
by frame interleaved across streams or cut at random points; the client side of the run and the
per-connection oracle."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import socket
import time
from dataclasses import replace

from . import h2_frames as f
from .dialects import Finding, Outcome, Script, script_rng
from .h2_client import CLIENT_SETTINGS, PREAMBLE, H2Session, StreamSeen
from .h2_mutators import mutated_stream
from .h2_requests import H2Template, base_headers, grpc_message, valid_stream
from .h2_rules import response_problems
from .proxy_process import ROUTE_TIMEOUT, SETTLE
from .wire import Expect, Request

STREAM_COUNTS = (0, 1, 1, 2, 3, 5, 8, 16, 24, 32, 48, 64, 80, 90)
MALFORMED_SHARE = 0.6
WAIT_SHARE = 0.5  # scripts that wait for the valid streams' answers before the broken one
BAD_PREFACE_SHARE = 0.03
# Connection starts that are not the HTTP/2 client preface followed by SETTINGS (RFC 9113 §3.4).
BAD_PREAMBLES = (
    ("ping_first", f.PREFACE + f.ping() + CLIENT_SETTINGS),
    ("data_first", f.PREFACE + f.frame(f.DATA, 0, 1, b"x") + CLIENT_SETTINGS),
    ("settings_ack_first", f.PREFACE + f.frame(f.SETTINGS, f.ACK, 0) + CLIENT_SETTINGS),
    ("truncated", f.PREFACE[:-3]),
    ("one_byte_off", f.PREFACE[:-1] + b"\r" + CLIENT_SETTINGS),
    ("http1_version", b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n" + CLIENT_SETTINGS),
    ("lowercase", f.PREFACE.lower() + CLIENT_SETTINGS),
    ("no_sm", b"PRI * HTTP/2.0\r\n\r\n" + CLIENT_SETTINGS),
)
FRAME_LEVEL_PREFACES = {"ping_first", "data_first", "settings_ack_first"}
STREAM_PATIENCE = 0.02  # seconds of settle time per stream of the script, beyond the HTTP/1.1 SETTLE
BODY_BUDGET = 60_000  # request body bytes per connection: inside the default 65,535 connection window
_ID = re.compile(rb"fz(\d+)-(\d+)-\d+s?$")


class Http2:
    name = "h2"

    def script(self, seed: int, index: int) -> Script:
        rng = script_rng(seed, index)
        valid: list[Request] = []
        sid, budget = 1, BODY_BUDGET
        for i in range(rng.choice(STREAM_COUNTS)):
            t, r = valid_stream(rng, f"fz{seed}-{index}-{i}", sid, budget)
            budget -= sum(len(b) for b in t.body)
            valid.append(r)
            sid += rng.choice((2, 2, 2, 4))  # skipped stream ids are legal (implicitly closed)
        tail: list[Request] = []
        if not valid or rng.random() < MALFORMED_SHARE:
            bad, swallows, last = mutated_stream(rng, f"fz{seed}-{index}-{len(valid)}", sid)
            tail.append(bad)
            sid = last + 2
            if bad.mutation != "truncated_frame" and sid < f.MAX_WINDOW and rng.random() < 0.4:
                for _ in range(rng.randint(1, 3)):  # streams after it: answered unless the connection ended
                    _, r = valid_stream(rng, f"fz{seed}-{index}-{len(valid) + len(tail)}", sid, budget // 4)
                    tail.append(replace(r, opens=r.opens and not swallows))
                    sid += 2
        if rng.random() < BAD_PREFACE_SHARE:
            name, preamble = rng.choice(BAD_PREAMBLES)
            # Nothing after a broken preface is a stream: the proxy must only end the connection.
            first = Request(f"fz{seed}-{index}-p", preamble, Expect.ANY, f"bad_preface:{name}", opens=False)
            requests = [first, *(replace(r, expect=Expect.ANY, opens=False) for r in valid + tail)]
            pieces = [preamble, *_layout(rng, requests[1:])]
            return Script(seed, index, self.name, requests, [p for p in pieces if p])
        wait = bool(valid and tail and rng.random() < WAIT_SHARE)
        pieces = [PREAMBLE, *_layout(rng, valid)]
        wait_before = len(pieces) if wait else 0
        pieces += _layout(rng, tail)
        return Script(seed, index, self.name, valid + tail, [p for p in pieces if p],
                      sequential=wait, wait_before=wait_before if wait else 0)

    def rebuild(self, script: Script, keep: list[int], half_close: bool, whole: bool) -> Script:
        """The script with only the requests in ``keep``, each stream's frames in order, in one write."""
        requests = [script.requests[i] for i in keep]
        head = b"" if requests and _bad_preface(requests[0]) else PREAMBLE
        return replace(script, requests=requests, pieces=[head + b"".join(r.data for r in requests)],
                       sequential=False, wait_before=0, half_close=False)

    def canary(self, seed: int, n: int) -> Script:
        t = H2Template(1, base_headers(f"fz{seed}-canary{n}-0"))
        r = t.request(f"fz{seed}-canary{n}-0", Expect.BACKEND, "valid:canary")
        return Script(seed, -1, self.name, [r], [PREAMBLE + r.data])

    async def run(self, script: Script, port: int) -> Outcome:
        out = Outcome(script)
        session = H2Session()
        out.detail = session
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hangs = sum(1 for r in script.requests if b"/h/hang/" in r.data or b"/h/slow/" in r.data)
        # Many streams on one connection are many exchanges for the proxy: a little more time each.
        patience = SETTLE + ROUTE_TIMEOUT * (1 + hangs) + STREAM_PATIENCE * len(script.requests)
        sent: list[Request] = []
        by_piece = _requests_by_piece(script)
        # ACKs owed to the proxy go out only between frames: after the preamble, at the wait, and at the
        # end unless the script ends inside a frame (a reply would become part of it).
        clean_end = not any(r.mutation in ("truncated_frame", "byte_noise") or _bad_preface(r)
                            for r in script.requests)
        session.must_close = bool(script.requests) and _bad_preface(script.requests[0])
        if session.must_close:
            # Bytes that are no preface are refused at once or by the head timeout (2 s); a preface with
            # the wrong first frame is refused at once by a strict peer.
            frame_level = script.requests[0].mutation.split(":")[1] in FRAME_LEVEL_PREFACES
            patience = 2.0 if frame_level else SETTLE
        first_sent = last_sent = time.monotonic()
        try:
            for n, piece in enumerate(script.pieces):
                if n == 1 or n == script.wait_before:
                    _reply(writer, session)
                if n and n == script.wait_before:
                    await _settle(reader, writer, session, out, sent, time.monotonic() + patience)
                    if out.closed or out.stuck or session.problem or session.goaway:
                        break
                writer.write(piece)
                await writer.drain()
                out.sent += len(piece)
                sent += by_piece[n]
                last_sent = time.monotonic()
                await _pump(reader, writer, session, out)
        except (ConnectionError, OSError, RuntimeError):
            pass  # the proxy closed while we wrote (uvloop: RuntimeError): judged on what it answered
        if clean_end:
            session.may_reply = True
            _reply(writer, session)
        if not (out.closed or out.stuck or (session.problem and not session.must_close)):
            await _settle(reader, writer, session, out, sent, last_sent + patience)
        out.waited = time.monotonic() - last_sent
        out.sending = last_sent - first_sent
        out.answered = sum(1 for st in session.streams.values() if st.ended)
        out.malformed = session.problem
        writer.close()
        return out

    def judge(self, outcome: Outcome) -> list[Finding]:
        return judge_h2(outcome)


def _layout(rng: random.Random, requests: list[Request]) -> list[bytes]:
    """The write calls for some streams: whole, per stream, interleaved frame by frame, or cut."""
    if not requests:
        return []
    mode = rng.choices(("whole", "per_stream", "interleaved", "cuts"), (40, 15, 30, 15))[0]
    if mode == "per_stream":
        return [r.data for r in requests]
    if mode == "interleaved":
        data = _interleave([list(r.frames) for r in requests])
    else:
        data = b"".join(r.data for r in requests)
    if mode == "cuts" and len(data) > 1:
        cuts = sorted(set(rng.randrange(1, len(data)) for _ in range(rng.randint(1, 8))))
        return [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
    return [data]


def _interleave(streams: list[list[bytes]]) -> bytes:
    """Each stream's frames up to its header block in stream order (streams open in increasing id
    order), then the rest round-robin across streams."""
    out, rests = [], []
    for frames in streams:
        k = next((i for i, fr in enumerate(frames) if len(fr) > 3 and fr[3] == f.HEADERS), len(frames) - 1)
        out += frames[:k + 1]
        rests.append(frames[k + 1:])
    for group in itertools.zip_longest(*rests):
        out += [fr for fr in group if fr is not None]
    return b"".join(out)


def _requests_by_piece(script: Script) -> list[list[Request]]:
    """Which requests are complete once each piece is written (by byte offsets after the preamble)."""
    ends, total = [], 0
    for piece in script.pieces:
        total += len(piece)
        ends.append(total)
    out: list[list[Request]] = [[] for _ in script.pieces]
    offset = len(PREAMBLE)
    for r in script.requests:
        offset += len(r.data)
        n = next((i for i, end in enumerate(ends) if end >= offset), len(ends) - 1)
        out[n].append(r)
    return out


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: H2Session,
                out: Outcome, timeout: float = 0.0) -> None:
    """Read what is there (or wait up to ``timeout`` for something), answering SETTINGS and PING."""
    try:
        async with asyncio.timeout(timeout if timeout > 0 else 0.0005):
            data = await reader.read(65536)
    except TimeoutError:
        return
    except (ConnectionError, OSError):
        data, out.reset = b"", True
    if not data:
        out.closed = True
        return
    session.replies += session.feed(data)
    if session.may_reply:
        _reply(writer, session)


def _reply(writer: asyncio.StreamWriter, session: H2Session) -> None:
    if session.replies and not writer.is_closing():
        writer.write(bytes(session.replies))
    session.replies.clear()


async def _settle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: H2Session, out: Outcome,
                  sent: list[Request], deadline: float) -> None:
    """Read until every stream the proxy must settle is settled (and after an error GOAWAY, the close)."""
    def done() -> bool:
        if session.must_close or out.closed:
            return out.closed
        if session.problem:
            return True
        if not session.settings_seen:
            return False  # the server's preface (RFC 9113 §3.4) is owed on every connection
        if session.goaway is not None and session.goaway[1] != f.NO_ERROR:
            return False  # the connection must close after an error GOAWAY (RFC 9113 §5.4.1)
        return all(session.settled(r.sid, out.closed) for r in sent if r.opens)

    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.stuck = True
            return
        await _pump(reader, writer, session, out, remaining)


def _bad_preface(r: Request) -> bool:
    return r.mutation.startswith("bad_preface:")


def _expected_body(r: Request, rid: bytes) -> bytes:
    if r.head_only:
        return b""
    return grpc_message(b"ok " + rid) if b"application/grpc" in r.data else b"ok " + rid


def _foreign(echo: bytes, script: Script) -> bool:
    m = _ID.match(echo)
    return m is not None and (int(m.group(1)), int(m.group(2))) != (script.seed, script.index) \
        and echo not in script.data


def judge_h2(out: Outcome) -> list[Finding]:
    """The per-connection oracle: well-formed frames and responses; every valid request answered with
    its own echo (unless a broken request ended the connection first); no answer carrying another
    connection's request; every stream settled and an error GOAWAY followed by the close."""
    s = out.script
    session: H2Session = out.detail
    found: list[Finding] = []

    def finding(kind: str, detail: str) -> None:
        found.append(Finding(kind, detail, s.index))

    if session.must_close:
        # After a broken preface the proxy owes nothing but the end of the connection (it may even have
        # answered in HTTP/1.1, having taken the bytes for an HTTP/1.1 request).
        if out.stuck:
            mutation = s.requests[0].mutation
            if session.settings_seen and mutation.split(":")[1] in FRAME_LEVEL_PREFACES:
                finding("lenient-preface", f"the proxy kept a connection whose preface is not followed by "
                                           f"SETTINGS ({mutation}; RFC 9113 §3.4: a PROTOCOL_ERROR)")
            else:
                finding("stuck", f"no close {out.waited:.1f}s after a broken preface ({mutation})")
        return found
    if session.problem:
        finding("malformed-response", session.problem)
    requests = {r.sid: r for r in s.requests}
    first_bad = next((i for i, r in enumerate(s.requests) if r.malformed), len(s.requests))
    ended_badly = out.closed or (session.goaway is not None and session.goaway[1] != f.NO_ERROR)
    top = max(requests, default=0)
    for sid, st in session.streams.items():
        if sid % 2 == 0 or sid > top:
            finding("unsolicited-answer", f"frames on stream {sid}, which the client never opened")
        r = requests.get(sid)
        if st.ended and st.headers is not None:
            problems = response_problems(st.headers, st.trailers, len(st.body), bool(r and r.head_only))
            if problems:
                finding("malformed-response", f"stream {sid}: {'; '.join(problems)}")
        echo = st.header(b"x-fuzz-echo")
        if echo is not None and _foreign(echo, s):
            finding("desync", f"stream {sid} got the answer echoing {echo!r}, a request of another connection")
    for i, r in enumerate(s.requests):
        st = session.streams.get(r.sid, StreamSeen())
        rid = r.rid.encode()
        if r.expect is Expect.BACKEND:
            if st.ended and st.headers is not None:
                if st.status() != b"200" or st.header(b"x-fuzz-echo") != rid:
                    finding("wrong-answer", f"stream {r.sid} ({r.mutation}) got status {st.status()!r} echoing "
                                            f"{st.header(b'x-fuzz-echo')!r}, expected 200 echoing {r.rid!r}")
                elif bytes(st.body) != _expected_body(r, rid):
                    finding("wrong-answer", f"stream {r.sid} ({r.mutation}) got body {bytes(st.body)[:80]!r}")
            elif st.reset is not None or ended_badly:
                # A broken request may end the connection, and with it the streams still in flight
                # (RFC 9113 §5.4.1), unless the script waited for them before sending it.
                excused = i > first_bad or (ended_badly and first_bad < len(s.requests) and not s.sequential)
                if not excused:
                    what = f"reset ({st.reset})" if st.reset is not None else f"ended by {_ending(session, out)}"
                    finding("closed-without-answer", f"stream {r.sid} ({r.mutation}) was {what} without an answer")
        elif r.expect is Expect.LOCAL and st.ended and st.header(b"x-fuzz-echo") is not None:
            finding("wrong-answer", f"stream {r.sid} ({r.mutation}) reached the backend, expected a local answer")
    if out.stuck:
        pending = [r.sid for r in s.requests if r.opens and not session.settled(r.sid, out.closed)]
        finding("stuck", f"streams {pending[:10]} unsettled and no close {out.waited:.1f}s after the last byte sent"
                         + (f" (after GOAWAY {session.goaway})" if session.goaway else ""))
    return found


def _ending(session: H2Session, out: Outcome) -> str:
    if session.goaway is not None:
        return f"GOAWAY(last={session.goaway[0]}, code={session.goaway[1]})"
    return "a reset of the connection" if out.reset else "the proxy closing the connection"
