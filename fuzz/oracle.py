"""The whole-run oracle: the proxy process survived and stayed quiet, and nothing was smuggled to the
backend (every request it received is one the proxy itself handled and logged, by x-request-id)."""

from __future__ import annotations

import re
from collections import Counter

from .capture_backend import CaptureBackend, Received
from .dialects import Finding
from .proxy_process import ProxyProcess

_QUOTED = re.compile(rb'"([^"\n]*)"')
_SCRIPT_ID = re.compile(r"fz\d+-(\d+)-\d+s?$")


def judge_process(proxy: ProxyProcess) -> list[Finding]:
    """Alive, still ready, and no traceback or fatal error on stderr. Call before stopping it."""
    found = []
    if not proxy.alive():
        found.append(Finding("crash", f"meshbox-proxy exited with {proxy.proc.returncode}"))
    else:
        status = proxy.ready_status()
        if status != 200:
            found.append(Finding("not-ready", f"admin GET /ready answered {status or 'nothing'}"))
    found += [Finding("stderr", block) for block in proxy.trouble()]
    return found


def logged_ids(access_log: bytes) -> Counter[bytes]:
    """Every quoted field of the access log (the default format quotes %REQ(X-REQUEST-ID)%), with the
    number of lines (requests the proxy handled) it appears in."""
    return Counter(field for line in access_log.splitlines() for field in set(_QUOTED.findall(line)))


def script_of(received: Received, backend: CaptureBackend) -> int | None:
    """The script a backend request came from: by its id, else by the request before it on the same
    upstream connection (the one whose body carried it)."""
    candidates = [received] + [r for r in reversed(backend.received)
                               if r.conn == received.conn and r.index < received.index]
    for r in candidates:
        m = _SCRIPT_ID.match(r.rid or "")
        if m:
            return int(m.group(1))
    return None


def judge_backend(backend: CaptureBackend, access_log: bytes) -> list[Finding]:
    """No request reached the backend that the proxy did not handle as a request of its own."""
    logged = logged_ids(access_log)
    found = []
    seen = Counter(r.rid for r in backend.received if r.rid is not None)
    for r in backend.received:
        where = f"upstream connection {r.conn}, request {r.index}: {r.method.decode('latin-1')} " \
                f"{r.target[:80].decode('latin-1')}"
        if r.rid is None:
            found.append(Finding("no-request-id", "the backend received a request with no x-request-id: smuggled, "
                                                  f"or its id stripped ({where})", script_of(r, backend)))
        elif not any(i.encode("latin-1") in logged for i in r.ids):
            found.append(Finding("smuggled", f"the backend received {r.rid!r}, which the proxy never logged "
                                             f"as a request ({where})", script_of(r, backend)))
        elif seen[r.rid] > max(1, logged[r.rid.encode("latin-1")]):
            # (A client may send an id twice itself: a mutation that cuts bytes out of another script's id
            # can make one. Each request the proxy handled may reach the backend once.)
            found.append(Finding("duplicate", f"the backend received {r.rid!r} {seen[r.rid]} times, the proxy "
                                              f"handled it {logged[r.rid.encode('latin-1')]} times ({where})",
                                 script_of(r, backend)))
            seen[r.rid] = 0  # reported once
    for r in backend.received:
        if r.problems:
            found.append(Finding("upstream-malformed", f"the proxy forwarded an HTTP/2 request no HTTP/2 client may "
                                                       f"send ({'; '.join(r.problems)}); upstream connection "
                                                       f"{r.conn}, id {r.rid!r}", script_of(r, backend)))
    for conn, complaint in backend.stats.parse_errors:
        last = next((r for r in reversed(backend.received) if r.conn == conn), None)
        found.append(Finding("upstream-garbage", f"the proxy sent bytes a strict parser (h11, h2) rejects on upstream "
                                                 f"connection {conn}: {complaint}; bytes: "
                                                 f"{backend.raw_bytes(conn)[-300:]!r}",
                             script_of(last, backend) if last else None))
    return found
