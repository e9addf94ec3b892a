"""Servers the network-namespace tests start inside their namespaces (run as a script, not a test).

    python netns_servers.py NAME HTTP_PORT [TCP_ECHO_PORT ...]

HTTP answers every GET with ``NAME <path> from <client ip>`` (HTTP/1.1, keep-alive); each TCP port
echoes bytes upper-cased (IPv4 and IPv6). Prints ``ready`` once everything listens.
"""

from __future__ import annotations

import socket
import socketserver
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    name, http_port, *tcp_ports = sys.argv[1:]

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = f"{name} {self.path} from {self.client_address[0]} rid={self.headers.get('x-request-id')}\n"
            data = body.encode()
            self.send_response(200)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            return

    class Echo(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            while data := self.request.recv(65536):
                self.request.sendall(data.upper())

    class TcpServer(socketserver.ThreadingTCPServer):
        # "::" with the kernel's default dual stack: IPv4 and IPv6 clients alike.
        address_family = socket.AF_INET6
        allow_reuse_address = True
        daemon_threads = True

    servers: list[socketserver.BaseServer] = [ThreadingHTTPServer(("0.0.0.0", int(http_port)), Handler)]
    servers += [TcpServer(("::", int(p)), Echo) for p in tcp_ports]
    for server in servers[1:]:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("ready", flush=True)
    servers[0].serve_forever()


if __name__ == "__main__":
    main()
