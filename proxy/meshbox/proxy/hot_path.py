"""The modules every request or TCP session passes through, which the build compiles to C with mypyc
(proxy/setup.py reads HOT_PATH from this file), and a check of what this installation runs.

MESHBOX_PROXY_PURE=1 at build time leaves them pure Python (no C compiler needed; slower).
"""

from __future__ import annotations

import importlib
import importlib.machinery

HOT_PATH = (
    "meshbox.proxy.http_proxy",
    "meshbox.proxy.exchange",
    "meshbox.proxy.exchange_core",
    "meshbox.proxy.exchange_resilience",
    "meshbox.proxy.exchange_state",
    "meshbox.proxy.upstream_http",
    "meshbox.proxy.upstream_http_open",
    "meshbox.proxy.header_policy",
    "meshbox.proxy.framing",
    "meshbox.proxy.tcp_proxy",
    "meshbox.proxy.access_log",
    "meshbox.proxy.deadlines",
    "meshbox.proxy.request_id",
    "meshbox.proxy.metrics",
    "meshbox.proxy.load_balancer",
    "meshbox.proxy.upstream_hosts",
    "meshbox.proxy.codec.events",
    "meshbox.proxy.codec.heads",
    "meshbox.proxy.codec.writer",
    "meshbox.proxy.codec.httptools_codec",
    "meshbox.proxy.context",
    "meshbox.proxy.tracing",
    "meshbox.proxy.trace_context",
    "meshbox.proxy.security_labels",
    "meshbox.proxy.route_match",
    "meshbox.proxy.inbound_policy",
    "meshbox.proxy.peer_identity",
    "meshbox.proxy.peer_metadata",
    "meshbox.proxy.recent_requests",
    "meshbox.proxy.grpc_status",
    "meshbox.proxy.hpack_huffman",
    "meshbox.proxy.hpack",
    "meshbox.proxy.h2_events",
    "meshbox.proxy.h2_headers",
    "meshbox.proxy.h2_frames",
    "meshbox.proxy.h2_state",
    "meshbox.proxy.h2_receive",
    "meshbox.proxy.h2_connection",
    "meshbox.proxy.h2_link",
    "meshbox.proxy.h2_framing",
    "meshbox.proxy.http2_stream",
    "meshbox.proxy.http2_downstream",
    "meshbox.proxy.upstream_h2",
    "meshbox.proxy.http2_to_http1",
    "meshbox.proxy.tls_layer",
)


def compiled_modules() -> list[str]:
    """The HOT_PATH modules that this installation loads as compiled extension modules."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    return [name for name in HOT_PATH if (importlib.import_module(name).__file__ or "").endswith(suffixes)]
