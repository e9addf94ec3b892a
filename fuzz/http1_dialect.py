"""HTTP/1.1 connection scripts: pipelined or sequential well-formed requests, often ended by a broken
one, written at random split points and sometimes half-closed; the client side of the run and the
per-connection oracle."""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from .dialects import Finding, Outcome, Script, script_rng
from .hostile_responses import FORGED_ID
from .proxy_process import ROUTE_TIMEOUT, SETTLE
from .request_mutators import mutated_request, valid_request
from .response_reader import MalformedResponse, ResponseReader
from .wire import Expect, Request, Template

_SCRIPT_ID = re.compile(rb"fz(\d+)-(\d+)-\d+s?$")
PIPELINE_LENGTHS = (0, 0, 0, 1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 16, 24)
MALFORMED_SHARE = 0.7  # scripts that end with a broken request
HALF_CLOSE_SHARE = 0.12
SLOW_CLIENT = 1.0  # seconds of writing after which a 408 is the client's own doing (head timeout: 2 s)
SEQUENTIAL_SHARE = 0.12


class Http1:
    name = "http/1.1"

    def script(self, seed: int, index: int) -> Script:
        rng = script_rng(seed, index)
        requests: list[Request] = []
        for i in range(rng.choice(PIPELINE_LENGTHS)):
            requests.append(valid_request(rng, f"fz{seed}-{index}-{i}")[1])
            if requests[-1].last:
                break
        if not requests or (not requests[-1].last and rng.random() < MALFORMED_SHARE):
            requests.append(mutated_request(rng, f"fz{seed}-{index}-{len(requests)}"))
            if rng.random() < 0.25:  # well-formed bytes after a broken request: never answered as themselves
                tail = valid_request(rng, f"fz{seed}-{index}-{len(requests)}")[1]
                while tail.head_only:  # its answer would have no body: the reader could not know
                    tail = valid_request(rng, f"fz{seed}-{index}-{len(requests)}")[1]
                tail.expect, tail.may_close = Expect.ANY, True
                requests.append(tail)
        sequential = len(requests) > 1 and rng.random() < SEQUENTIAL_SHARE
        return Script(seed, index, self.name, requests, _split(rng, requests, sequential),
                      half_close=rng.random() < HALF_CLOSE_SHARE, sequential=sequential,
                      slow_pieces=rng.random() < 0.05)

    async def run(self, script: Script, port: int) -> Outcome:
        requests = script.requests
        first_bad = _first_malformed(requests)
        # After a broken request the proxy's count of requests may differ from ours: only that one's own
        # method is still a fair guess for the answer that follows.
        reader = ResponseReader(lambda i: i <= first_bad and i < len(requests) and requests[i].head_only)
        out = Outcome(script)
        sock_reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first_sent = last_sent = time.monotonic()
        try:
            for n, piece in enumerate(script.pieces):
                if script.sequential and n > 0:  # one piece per request: wait for the previous answer
                    await _read_until(sock_reader, reader, out, _has_answers(reader, n),
                                      time.monotonic() + SETTLE + ROUTE_TIMEOUT)
                    if out.closed or out.stuck or out.malformed:
                        break
                writer.write(piece)
                await writer.drain()
                out.sent += len(piece)
                last_sent = time.monotonic()
                await asyncio.sleep(0.003 if script.slow_pieces else 0)
            if script.half_close and not out.closed and writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError, RuntimeError):
            pass  # the proxy closed while we wrote (uvloop: RuntimeError): judged on what was fully sent
        if not (out.closed or out.stuck or out.malformed):
            hangs = sum(1 for r in requests if b"/h/hang/" in r.data or b"/h/slow/" in r.data)
            await _read_until(sock_reader, reader, out, lambda: _all_answered(reader, requests),
                              last_sent + SETTLE + ROUTE_TIMEOUT * (1 + hangs))
        out.waited = time.monotonic() - last_sent
        out.sending = last_sent - first_sent
        out.responses = reader.responses
        out.partial = bytes(reader.buf)
        writer.close()
        return out

    def judge(self, outcome: Outcome) -> list[Finding]:
        return judge_http1(outcome)

    def rebuild(self, script: Script, keep: list[int], half_close: bool, whole: bool) -> Script:
        requests = [script.requests[i] for i in keep]
        pieces = [r.data for r in requests] if script.sequential or not whole else [b"".join(r.data for r in requests)]
        return replace(script, requests=requests, pieces=pieces, half_close=half_close)

    def canary(self, seed: int, n: int) -> Script:
        rid = f"fz{seed}-canary{n}-0"
        data = Template(target=b"/v/" + rid.encode(), headers=[(b"host", b"svc"), (b"x-request-id", rid.encode())]
                        ).serialize()
        return Script(seed, -1, self.name, [Request(rid, data, Expect.BACKEND, "valid:canary")], [data])


def _first_malformed(requests: list[Request]) -> int:
    return next((i for i, r in enumerate(requests) if r.malformed), len(requests))


def _all_answered(reader: ResponseReader, requests: list[Request]) -> bool:
    if reader.partial or len(reader.responses) < len(requests):
        return False
    # A closing answer is followed by the close itself: wait for it, so bytes after it show up.
    return not reader.responses[-1].closes or reader.eof


async def _read_until(stream: asyncio.StreamReader, reader: ResponseReader, out: Outcome,
                      enough: Callable[[], bool], deadline: float) -> None:
    """Read into ``reader`` until ``enough()``, the proxy closes, or ``deadline`` (then ``out.stuck``)."""
    while not enough():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            out.stuck = True
            return
        try:
            async with asyncio.timeout(remaining):
                data = await stream.read(65536)
        except TimeoutError:
            out.stuck = True
            return
        except (ConnectionError, OSError):
            data, out.reset = b"", True
        try:
            reader.feed(data)
        except MalformedResponse as exc:
            out.malformed = str(exc)
            return
        if not data:
            out.closed = True
            return


def _split(rng: random.Random, requests: list[Request], sequential: bool) -> list[bytes]:
    """The write calls: one per request when sequential, else one, per request, random cuts or bytewise."""
    if sequential:
        return [r.data for r in requests]
    data = b"".join(r.data for r in requests)
    mode = rng.choices(("whole", "per_request", "cuts", "bytewise"), (45, 20, 27, 8))[0]
    if mode == "per_request":
        return [r.data for r in requests]
    if mode == "cuts" and len(data) > 1:
        cuts = sorted(set(rng.randrange(1, len(data)) for _ in range(rng.randint(1, 6))))
        edges = [0, *cuts, len(data)]
        return [data[a:b] for a, b in itertools.pairwise(edges)]
    if mode == "bytewise":
        head = min(len(data), 16)
        return [data[i:i + 1] for i in range(head)] + ([data[head:]] if len(data) > head else [])
    return [data]


def _foreign(echo: bytes, script: Script) -> bool:
    """An id of another connection's request (not one this connection wrote, even mangled)."""
    m = _SCRIPT_ID.match(echo)
    return m is not None and (int(m.group(1)), int(m.group(2))) != (script.seed, script.index) \
        and echo not in script.data


def _has_answers(reader: ResponseReader, n: int) -> Callable[[], bool]:
    return lambda: len(reader.responses) >= n


def judge_http1(out: Outcome) -> list[Finding]:
    """The per-connection oracle: right answers in order, none unsolicited, no forged response, and no
    complete request left without an answer or a close."""
    s = out.script
    found: list[Finding] = []

    def finding(kind: str, detail: str) -> None:
        found.append(Finding(kind, detail, s.index))

    requests = s.requests
    first_bad = _first_malformed(requests)
    ends, total = [], 0
    for r in requests:
        total += len(r.data)
        ends.append(total)
    complete = [end <= out.sent for end in ends]  # fully sent
    if out.malformed:
        finding("malformed-response", out.malformed)
    for i, resp in enumerate(out.responses):
        echo = resp.echo
        if echo == FORGED_ID:
            finding("response-splitting", f"answer {i} is a response the backend hid inside another one's body")
            continue
        if i > 0 and out.responses[i - 1].closes:
            finding("answer-after-close", f"answer {i} (status {resp.status}) follows a Connection: close answer")
        if i >= first_bad:
            # After a broken request the proxy may see fewer or more requests (a mutation may damage the id
            # too): only an answer to another connection's request is certainly wrong.
            if echo is not None and _foreign(echo, s):
                finding("desync", f"answer {i} echoes {echo!r}, a request of another connection")
            continue
        if i >= len(requests):
            finding("unsolicited-answer", f"answer {i} (status {resp.status}) to {len(requests)} requests")
            continue
        r = requests[i]
        if resp.status == 408 and out.sending > SLOW_CLIENT:
            continue  # on a loaded machine a split-up head can take longer than the head timeout
        if r.expect is Expect.BACKEND and (resp.status != 200 or echo != r.rid.encode()):
            finding("wrong-answer", f"request {i} ({r.mutation}) got status {resp.status} echoing {echo!r}, "
                                    f"expected 200 echoing {r.rid!r}")
        elif r.expect is Expect.LOCAL and (resp.status < 400 or echo is not None):
            finding("wrong-answer", f"request {i} ({r.mutation}) got status {resp.status} echoing {echo!r}, "
                                    "expected a local error reply")
        elif echo == b"-":
            finding("no-request-id", f"request {i} ({r.mutation}) reached the backend without its x-request-id")
        elif echo is not None and echo != r.rid.encode():
            finding("desync", f"request {i} ({r.mutation}) got the answer echoing {echo!r}")
    answered = len(out.responses)
    if out.stuck and (answered < first_bad or first_bad == len(requests) or out.partial):
        # (After a broken request the proxy may rightly have seen fewer requests and wait for the next.)
        inside = " (inside a response)" if out.partial else ""
        finding("stuck", f"{answered} answers to {len(requests)} requests and no close "
                         f"{out.waited:.1f}s after the last byte sent{inside}")
    elif answered < first_bad and out.closed and not out.reset:
        # (A reset may destroy answers the proxy sent: TCP drops unread bytes. The proxy closed; that is an
        # answer, and the run counts these as `reset`.)
        # A valid request left without an answer: allowed only after something that may close.
        excused = s.half_close or any(r.may_close for r in requests[:answered + 1]) or \
            (answered > 0 and out.responses[-1].closes) or not complete[answered]
        if not excused:
            r = requests[answered]
            finding("closed-without-answer", f"request {answered} ({r.mutation}) was fully sent and the proxy closed "
                                             f"after {answered} answers" + (" mid-response" if out.partial else ""))
    return found
