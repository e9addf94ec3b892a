"""The webhook's HTTPS server: TLS 1.2 or newer, a certificate reloaded when its files change.

Each accepted connection is wrapped with the newest good TLS context; the certificate
files are checked (one ``stat`` each) on every new connection, so a rotated certificate
is served from the next connection on. A pair that does not load (half-rotated, key not
matching) is logged and the previous one keeps serving.

Routes: ``POST /inject`` (AdmissionReview), ``GET /ready``. Anything else is 404, a wrong
method 405, a malformed review 400 with the reason as plain text.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from meshbox.injector.webhook_review import AdmissionRequest, Decision, ReviewError, build_response, parse_review

log = logging.getLogger("meshbox.webhook")

MAX_BODY_BYTES = 8 * 1024 * 1024  # the API server caps objects at ~1.5 MiB; leave room, refuse floods
SOCKET_TIMEOUT_S = 30.0
INJECT_PATH = "/inject"
READY_PATH = "/ready"

Decider = Callable[[AdmissionRequest], Decision]


class CertificateError(RuntimeError):
    """The certificate and key files cannot be loaded into a TLS context."""


def _file_signature(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load_server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A server TLS context (TLS >= 1.2) for the PEM certificate chain and key files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert_file), str(key_file))
    except (OSError, ssl.SSLError) as e:
        raise CertificateError(f"cannot load certificate {cert_file} with key {key_file}: {e}") from e
    return context


class CertificateReloader:
    """Holds the current TLS context; swaps in a new one when the files change and load."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._lock = threading.Lock()
        self._signature = self._signatures()
        self._context = load_server_context(cert_file, key_file)
        self.reloads = 0

    def _signatures(self) -> tuple[tuple[int, ...], ...]:
        return (_file_signature(self.cert_file), _file_signature(self.key_file))

    def context(self) -> ssl.SSLContext:
        """The context for a new connection (reloaded first if the files changed)."""
        with self._lock:
            try:
                signature = self._signatures()
            except OSError as e:
                log.error("certificate files unreadable, keeping the current certificate: %s", e)
                return self._context
            if signature != self._signature:
                try:
                    self._context = load_server_context(self.cert_file, self.key_file)
                except CertificateError as e:
                    log.error("new certificate rejected, keeping the current one: %s", e)
                else:
                    self.reloads += 1
                    log.info("reloaded serving certificate from %s", self.cert_file)
                # Remember the failed signature too: retry only when the files change again.
                self._signature = signature
            return self._context


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        self.request.settimeout(SOCKET_TIMEOUT_S)
        self.request.do_handshake()
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: HTTPStatus, reason: str) -> None:
        log.warning("%s %s: %d %s", self.command, self.path, status, reason)
        self._send(status, (reason + "\n").encode())

    def do_GET(self) -> None:
        if self.path == READY_PATH:
            self._send(HTTPStatus.OK, b"ready\n")
        elif self.path == INJECT_PATH:
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{INJECT_PATH} takes POST")
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0] != INJECT_PATH:
            # The body is left unread, so this connection cannot carry another request.
            self.close_connection = True
            self._error(HTTPStatus.NOT_FOUND, f"no such path {self.path}")
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            self.close_connection = True
            self._error(HTTPStatus.LENGTH_REQUIRED, "Content-Length header with a byte count is required")
            return
        length = int(length_header)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
            return
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            return
        content_type = self.headers.get("Content-Type", "").split(";", 1)[0].strip()
        if content_type != "application/json":
            self._error(HTTPStatus.BAD_REQUEST, f"Content-Type must be application/json, got {content_type!r}")
            return
        try:
            request = parse_review(body)
        except ReviewError as e:
            self._error(HTTPStatus.BAD_REQUEST, f"malformed AdmissionReview: {e}")
            return
        try:
            decision = self.server.decide(request)
        except Exception:
            # One bad pod must not take the webhook down (failurePolicy: Fail would block
            # every pod in the mesh): deny this one with a message and keep serving.
            log.exception("injection failed for review %s", request.uid)
            decision = Decision(allowed=False, message="meshbox webhook: internal error while injecting; see its log")
        outcome = (f"patched ({len(decision.patch)} operations)" if decision.patch
                   else "allowed unchanged" if decision.allowed else f"denied: {decision.message}")
        log.info("review %s %s pod in %r: %s", request.uid, request.operation, request.namespace, outcome)
        self._send(HTTPStatus.OK, json.dumps(build_response(request.uid, decision)).encode(), "application/json")


class WebhookServer(ThreadingHTTPServer):
    """HTTPS server for the admission webhook; ``serve_forever`` in a thread or the main loop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], certificates: CertificateReloader, decide: Decider) -> None:
        self.certificates = certificates
        self.decide = decide
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        raw, addr = self.socket.accept()
        # The handshake happens in the handler's thread (setup), not in the accept loop.
        tls = self.certificates.context().wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        # TLS handshake failures and dropped clients are routine; log them without a traceback.
        log.info("connection from %s ended with an error", client_address, exc_info=log.isEnabledFor(logging.DEBUG))

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self.server_address[1])
