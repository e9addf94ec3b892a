"""Socket probe run inside test namespaces (stdlib only, so any UID can run it with -I -S).

``probe.py serve NAME PORT...``: accept TCP on every PORT (IPv4 and IPv6); each connection
gets one JSON line: who answered (NAME), the local port it landed on, and the original
destination the kernel recorded (SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST), or null.
Prints ``ready`` once listening.

``probe.py dial HOST:PORT...``: connect to each target in turn and print one JSON list of the
answers ({"error": ...} for a target that could not be reached).
"""

from __future__ import annotations

import ipaddress
import json
import selectors
import socket
import struct
import sys

SO_ORIGINAL_DST = 80  # same value for IP6T_SO_ORIGINAL_DST (level SOL_IPV6)
DIAL_TIMEOUT = 3.0


def original_destination(conn: socket.socket) -> str | None:
    try:
        if conn.family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, packed = struct.unpack_from("!2xH4s", raw)
            return f"{ipaddress.IPv4Address(packed)}:{port}"
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, packed = struct.unpack_from("!2xH4x16s", raw)
        return f"[{ipaddress.IPv6Address(packed)}]:{port}"
    except OSError:
        return None


def serve(name: str, ports: list[int]) -> None:
    sel = selectors.DefaultSelector()
    for port in ports:
        for family, host in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, port))
            sock.listen(64)
            sel.register(sock, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            listener = key.fileobj
            assert isinstance(listener, socket.socket)
            conn, _ = listener.accept()
            with conn:
                answer = {"server": name, "port": conn.getsockname()[1], "orig": original_destination(conn)}
                conn.sendall(json.dumps(answer).encode() + b"\n")


def dial(target: str) -> dict[str, object]:
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=DIAL_TIMEOUT) as conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
        return json.loads(data) if data else {"error": "closed without an answer"}
    except OSError as exc:
        return {"error": str(exc)}


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], [int(p) for p in sys.argv[3:]])
    else:
        print(json.dumps([dial(t) for t in sys.argv[2:]]))
