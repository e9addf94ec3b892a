"""The proxy under test: a real ``meshbox-proxy`` process as ``make demo`` ships it (compiled build,
default httptools codec), with one bound HTTP listener routing to the capture backend."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# What a healthy proxy never prints on stderr.
TROUBLE = re.compile(r"Traceback \(most recent call last\)|Fatal error|Exception in callback|"
                     r"exception was never retrieved|Unhandled exception|Segmentation fault")
# Short request timeouts, so a request the proxy is not stuck on is answered (or its connection closed)
# within seconds: the oracle then tells a stuck exchange from a slow one. The keep-alive idle timeout is
# longer than SETTLE, so an answer held back until the connection idles out (issue #18 D6) shows as stuck.
ROUTE_TIMEOUT = 3.0  # long enough for the capture backend on a loaded machine
TIMEOUT_FLAGS = ("--request-head-timeout", "2", "--request-idle-timeout", "2", "--idle-timeout", "10")
SETTLE = 5.0  # seconds after a client's last byte by which the proxy must have answered or closed
# The backend is local and always up: a connect "timeout" can only be the proxy's own event loop lagging
# on a loaded machine (seen with thousands of HTTP/2 streams in flight), not a finding.
CONNECT_TIMEOUT = 2.5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_yaml(port: int, backend_port: int) -> str:
    """A ProxyConfig: host ``svc`` (any port) to the capture backend, no retries, a short route timeout, a
    connect timeout for a loaded machine."""
    return (
        f"listeners: [{{name: http, direction: OUTBOUND, address: 127.0.0.1, port: {port}, protocol: HTTP,"
        " route_config: rc, bind: true}]\n"
        "route_configs: [{name: rc, virtual_hosts: [{name: svc, domains: [svc],"
        f" routes: [{{match: {{prefix: /}}, timeout: {ROUTE_TIMEOUT}s, clusters: [{{cluster: svc}}]}}]}}]}}]\n"
        f"clusters: [{{name: svc, service: svc.default.svc.cluster.local, connect_timeout: {CONNECT_TIMEOUT}s}}]\n"
        f"endpoints: [{{cluster_name: svc, endpoints: [{{address: 127.0.0.1, port: {backend_port}}}]}}]\n")


def proxy_command() -> list[str]:
    """The installed ``meshbox-proxy`` script beside this interpreter, else ``python -m meshbox.proxy``."""
    script = Path(sys.executable).with_name("meshbox-proxy")
    return [str(script)] if script.exists() else [sys.executable, "-m", "meshbox.proxy"]


@dataclass
class ProxyProcess:
    proc: subprocess.Popen[bytes]
    port: int
    admin_port: int
    access_log: Path
    stderr_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def trouble(self) -> list[str]:
        """Stderr lines that mean an exception escaped or the process failed, each with what follows it."""
        lines = self.stderr_text().splitlines()
        blocks, i = [], 0
        while i < len(lines):
            if TROUBLE.search(lines[i]):
                end = _block_end(lines, i)
                blocks.append("\n".join(lines[i:end + 1]))
                i = end + 1
            else:
                i += 1
        return blocks

    def ready_status(self, timeout: float = 5) -> int:
        """The status of GET /ready on the admin port (0: no answer)."""
        try:
            with socket.create_connection(("127.0.0.1", self.admin_port), timeout=timeout) as s:
                s.sendall(b"GET /ready HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
                data = b""
                while not data.endswith(b"\n") or b"\r\n\r\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
        except OSError:
            return 0
        m = re.match(rb"HTTP/1\.1 (\d{3}) ", data)
        return int(m.group(1)) if m else 0

    def stop(self) -> None:
        """SIGTERM (the proxy drains and flushes its log), then SIGKILL if it lingers; by PID only."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _block_end(lines: list[str], i: int) -> int:
    """The last line of the complaint starting at line i: its (last chained) exception line, or a few
    context lines when it has no traceback."""
    traceback = lines[i].startswith("Traceback")
    end = i
    for j in range(i + 1, len(lines)):
        line = lines[j]
        if line.startswith("Traceback"):
            traceback = True
        elif not traceback and j - i > 4:
            break
        elif traceback and line and not line.startswith(" "):
            end = j
            following = next((x for x in lines[j + 1:] if x.strip()), "")
            if not following.startswith(("During handling", "The above exception")):
                return j
            traceback = False
            continue
        end = j
    return end


def start_proxy(workdir: Path, backend_port: int, codec: str = "httptools", timeout: float = 20) -> ProxyProcess:
    """Start the proxy and wait until its listener accepts connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "proxy.yaml"
    config.write_text(config_yaml(port, backend_port))
    access_log, stderr_path = workdir / "access.log", workdir / "stderr.log"
    with access_log.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen([*proxy_command(), "--config", str(config), "--admin-port", "0",
                                 "--outbound-port", "0", "--codec", codec, *TIMEOUT_FLAGS],
                                stdout=out, stderr=err, env={**os.environ, "POD_NAME": "fuzz"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = re.search(r"admin listening on [\d.]+:(\d+)", stderr_path.read_text(errors="replace"))
        if proc.poll() is not None:
            raise RuntimeError(f"meshbox-proxy exited with {proc.returncode}:\n{stderr_path.read_text()}")
        if m is not None and _accepts(port):
            return ProxyProcess(proc, port, int(m.group(1)), access_log, stderr_path)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"meshbox-proxy did not listen on 127.0.0.1:{port} within {timeout}s")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
