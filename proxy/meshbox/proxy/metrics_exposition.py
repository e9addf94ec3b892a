"""The Prometheus text exposition (format 0.0.4) of :class:`~meshbox.proxy.metrics.Stats`.

Written directly rather than through a client library's registry: a proxy that served 1,000 clusters has
about 40,000 sample lines (each request series with three histograms: about 20 MB), and a scrape must
stay well under Prometheus' usual timeouts. Each series' label text is built once (kept across scrapes)
and reused for all its lines; the exposition is a list of newline-terminated parts that the admin API
writes as they are (one ``writev``), never joined: joining, then prefixing the response head, copied
the 20 MB twice into freshly mapped memory, which cost more than formatting it. Imported on the first
scrape only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import accumulate

from meshbox.proxy.metrics import (
    DURATION_BUCKETS,
    LABELS_BEFORE_PROTOCOL,
    REQUEST_LABELS,
    REQUEST_SIZE_AT,
    RESPONSE_SIZE_AT,
    SIZE_BUCKETS,
    TCP_LABELS,
    Stats,
)

# Bucket bounds as Prometheus clients print them (floats), +Inf last.
_BOUNDS = (*(repr(float(b)) for b in DURATION_BUCKETS), "+Inf")
_SIZE_BOUNDS = (*(repr(float(b)) for b in SIZE_BUCKETS), "+Inf")
# (family, help, offset of its sum in a request entry); its buckets follow the sum.
_SIZE_FAMILIES = (
    ("istio_request_bytes", "Request body sizes in bytes (the access log's BYTES_RECEIVED).", REQUEST_SIZE_AT),
    ("istio_response_bytes", "Response body sizes in bytes (the access log's BYTES_SENT).", RESPONSE_SIZE_AT),
)
_TCP_FAMILIES = (
    ("istio_tcp_connections_opened_total", "TCP connections opened."),
    ("istio_tcp_connections_closed_total", "TCP connections closed."),
    ("istio_tcp_sent_bytes_total", "Bytes sent to the downstream on TCP connections."),
    ("istio_tcp_received_bytes_total", "Bytes received from the downstream on TCP connections."),
)


def _escape(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    return ",".join([f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)])


# Series key → its label text: series live as long as the process (counters are never removed), so
# this holds one entry per series; cleared if it ever holds far more than a scrape uses.
_REQUEST_TEXTS: dict[tuple[tuple[str, ...], int, str], bytes] = {}


def _request_texts(keys: list[tuple[tuple[str, ...], int, str]]) -> list[bytes]:
    texts = _REQUEST_TEXTS
    if len(texts) > 2 * len(keys) + 1024:
        texts.clear()
    out = []
    for key in keys:
        text = texts.get(key)
        if text is None:
            labels, code, flags = key
            text = texts[key] = _labels(REQUEST_LABELS, _request_values(labels, code, flags)).encode()
        out.append(text)
    return out


def _head(out: list[bytes], name: str, kind: str, help_text: str) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n".encode())


def _number(value: float) -> str:
    return repr(float(value))


def _request_values(labels: tuple[str, ...], code: int, flags: str) -> tuple[str, ...]:
    """A request key's label values: an HTTP request's labels end before request_protocol, a gRPC
    call's carry ("grpc", its status) there (Istio's request_protocol and grpc_response_status)."""
    if len(labels) > LABELS_BEFORE_PROTOCOL:
        return (*labels[:LABELS_BEFORE_PROTOCOL], labels[LABELS_BEFORE_PROTOCOL], str(code), flags,
                labels[LABELS_BEFORE_PROTOCOL + 1])
    return (*labels, "http", str(code), flags, "")


def _requests(total: Stats, out: list[bytes]) -> None:
    items = sorted(total.requests.items())
    encoded = _request_texts([key for key, _ in items])
    _head(out, "istio_requests_total", "counter", "Requests handled by the proxy.")
    out.append(b"".join([b"istio_requests_total{%s} %r\n" % (text, float(entry[0]))
                         for text, (_, entry) in zip(encoded, items, strict=True)]))
    name = "istio_request_duration_milliseconds"
    _head(out, name, "histogram", "Request duration in milliseconds.")
    template = _histogram_template(name, _BOUNDS)
    buckets = len(_BOUNDS)
    for text, (_, entry) in zip(encoded, items, strict=True):
        out.append(_histogram(template, text, entry[2:2 + buckets], entry[1]))
    for name, help_text, at in _SIZE_FAMILIES:
        _head(out, name, "histogram", help_text)
        template = _histogram_template(name, _SIZE_BOUNDS)
        for text, (_, entry) in zip(encoded, items, strict=True):
            out.append(_histogram(template, text, entry[at + 1:at + 1 + len(_SIZE_BOUNDS)], entry[at]))


def _histogram_template(name: str, bounds: Sequence[str]) -> bytes:
    """A ``%`` template of one histogram series: label text and cumulative count per bucket, then label
    text and count, label text and sum (one ``%`` per series instead of one per line: a scrape of 1,000
    clusters formats 3,000 of them)."""
    lines = [f'{name}_bucket{{%s,le="{bound}"}} %r' for bound in bounds]
    lines += [f"{name}_count{{%s}} %r", f"{name}_sum{{%s}} %r"]
    return "\n".join(lines).encode() + b"\n"


def _histogram(template: bytes, text: bytes, buckets: Sequence[float], total: float) -> bytes:
    counts = list(accumulate(buckets))
    n = len(counts)
    # [text, count] per bucket, then text, count, text, sum: the label text everywhere, then the numbers
    # put in their places (a slice assignment rather than a loop of appends).
    args: list[object] = [text] * (2 * n + 4)
    args[1:2 * n:2] = counts
    args[2 * n + 1] = counts[-1]
    args[2 * n + 3] = total
    return template % tuple(args)


def _tcp(total: Stats, out: list[bytes]) -> None:
    items = sorted(total.tcp.items())
    texts = [_labels(TCP_LABELS, (*labels, "tcp", flags)) for (labels, flags), _ in items]
    for column, (name, help_text) in enumerate(_TCP_FAMILIES):
        _head(out, name, "counter", help_text)
        out.append("".join([f"{name}{{{text}}} {_number(entry[column])}\n"
                            for text, (_, entry) in zip(texts, items, strict=True)]).encode())


def render(stats: Iterable[Stats]) -> bytes:
    """Prometheus text exposition of the sum of ``stats``."""
    return b"".join(render_parts(stats))


def render_parts(stats: Iterable[Stats]) -> list[bytes]:
    """:func:`render` as newline-terminated parts, in order (to be written without joining them)."""
    parts = list(stats)
    if len(parts) == 1:
        total = parts[0]  # one process: read its counters as they are, no copy
    else:
        total = Stats()
        for s in parts:
            total.merge(s.export())
    out: list[bytes] = []
    _requests(total, out)
    _tcp(total, out)
    for name, value in sorted(total.counters.items()):
        if name.endswith("_active"):
            # Kept up and down by the proxy (e.g. outlier_detection_ejections_active): a gauge.
            _head(out, f"meshbox_proxy_{name}", "gauge", f"meshbox proxy gauge {name}.")
            out.append(f"meshbox_proxy_{name} {_number(value)}".encode())
            continue
        _head(out, f"meshbox_proxy_{name}_total", "counter", f"meshbox proxy counter {name}.")
        out.append(f"meshbox_proxy_{name}_total {_number(value)}\n".encode())
    return out
