"""MeshConfig.tracing: defaults (Istio's 1 % sampling, no collector), an explicit 0 kept, bad values
refused naming the field, and the span wire format both ends share (meshbox.api.span_wire)."""

from __future__ import annotations

import pytest

from meshbox.api import span_wire
from meshbox.api.loader import parse_mesh_config
from meshbox.api.validation import ValidationError


def test_defaults_and_an_explicit_zero() -> None:
    default = parse_mesh_config("")
    assert default.tracing.sampling_percentage == 1.0 and default.tracing.collector_address == ""
    mesh = parse_mesh_config("tracing:\n  collector_address: otel.obs.svc:4317\n")
    assert mesh.tracing.sampling_percentage == 1.0 and mesh.tracing.collector_address == "otel.obs.svc:4317"
    assert parse_mesh_config("tracing:\n  sampling_percentage: 0\n").tracing.sampling_percentage == 0.0
    assert parse_mesh_config("tracing:\n  samplingPercentage: 100\n").tracing.sampling_percentage == 100.0


@pytest.mark.parametrize(("text", "message"), [
    ("tracing:\n  sampling_percentage: 101\n", "tracing.sampling_percentage: must be 0..100"),
    ("tracing:\n  sampling_percentage: -1\n", "tracing.sampling_percentage: must be 0..100"),
    ("tracing:\n  collector_address: otel\n", "tracing.collector_address: not host:port"),
    ("tracing:\n  collector_address: otel:99999\n", "tracing.collector_address: not host:port"),
])
def test_bad_tracing_config_is_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_mesh_config(text)


def test_pieces_and_encode_write_the_same_line_and_decode_reads_it() -> None:
    trace, span, parent = b"4bf92f3577b34da6a3ce929d0e0e4736", b"00f067aa0ba902b7", b"1111111111111111"
    pieces = span_wire.line_pieces(((b"component", b"proxy"), (b"pct", b"50%s")),
                                   ((b"http.url", b"http://%s%s"), (b"http.status_code", b"%s")), name=b"%s/*")
    values = (b"client", trace, span, parent, b"10", b"20", b"svc", b"svc", b"/x", b"200")
    assert len(pieces) == len(values) + 1
    line = b"".join(p + v for p, v in zip(pieces[:-1], values, strict=True)) + pieces[-1]
    assert line == span_wire.encode(b"client", trace, span, parent, 10, 20, b"svc/*",
                                    [(b"component", b"proxy"), (b"pct", b"50%s"), (b"http.url", b"http://svc/x"),
                                     (b"http.status_code", b"200")])
    (decoded,) = span_wire.decode(line)
    assert decoded.trace_id.hex() == trace.decode() and decoded.parent_id.hex() == parent.decode()
    assert decoded.attributes == (("component", "proxy"), ("pct", "50%s"), ("http.url", "http://svc/x"),
                                  ("http.status_code", "200"))
    assert next(span_wire.decode(span_wire.encode(b"server", trace, span, b"", 1, 2, b"a\tb", []))).name == "a b"
    for bad in (b"2\tclient\t" + trace + b"\t" + span + b"\t\t1\t2\tn\n", b"1\tclient\tzz\t" + span + b"\t\t1\t2\tn\n",
                b"1\tclient\t" + trace + b"\t" + span + b"\t\t1\t2\tn\tkey-without-value\n"):
        with pytest.raises(span_wire.SpanWireError):
            list(span_wire.decode(bad))
