"""Start, check and stop the servers a benchmark drives: nginx and meshbox-proxy.

Every server binds 127.0.0.1 on a free port, runs pinned to the CPUs it is given
(taskset), writes its logs into the benchmark's temporary directory, and is stopped by
its PID. Nothing here measures anything.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NGINX_CONF_DIR = Path(__file__).resolve().parent / "nginx"
START_TIMEOUT_S = 15.0


class ServerStartError(RuntimeError):
    """A server under benchmark did not come up; the message carries its log tail."""


@dataclass
class ServerProcess:
    """A running server: its process, the port it serves and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    stdout_path: Path
    stderr_path: Path
    # Where the server writes its errors (stderr, error logs); not the access log.
    error_logs: list[Path]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, limit: int = 2000) -> str:
        parts = []
        for path in self.error_logs:
            if path.exists():
                text = path.read_text(errors="replace")[-limit:].strip()
                if text:
                    parts.append(f"{path.name}: {text}")
        return "\n".join(parts) or "(no error output)"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; only this server's own PID is signalled."""
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; only that process's own PID is signalled."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str = "/", timeout: float = 2.0) -> tuple[int, bytes]:
    """One GET to 127.0.0.1:port; returns (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": "bench.local"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_until_serving(server: ServerProcess, path: str = "/", port: int | None = None) -> bytes:
    """Poll GET path until it answers 200; return the body. Raises if the process exits or time runs out."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last_error = "no attempt"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServerStartError(
                f"{server.name} exited with code {server.proc.returncode} before serving:\n{server.log_tail()}"
            )
        try:
            status, body = http_get(port or server.port, path)
        except OSError as exc:
            last_error = repr(exc)
        else:
            if status == 200:
                return body
            last_error = f"HTTP {status}: {body[:200]!r}"
        time.sleep(0.05)
    raise ServerStartError(f"{server.name} not serving after {START_TIMEOUT_S:g}s ({last_error}):\n{server.log_tail()}")


def spawn(name: str, argv: list[str], cpus: set[int], workdir: Path, port: int,
          error_logs: tuple[Path, ...] = ()) -> ServerProcess:
    """Run ``argv`` pinned to ``cpus`` with its stdout and stderr in files of ``workdir``."""
    stdout_path, stderr_path = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    return ServerProcess(name=name, proc=proc, port=port, stdout_path=stdout_path, stderr_path=stderr_path,
                         error_logs=[stderr_path, *error_logs])


def start_nginx(name: str, template: str, workdir: Path, cpus: set[int], **values: str | int) -> ServerProcess:
    """Fill bench/nginx/<template> (@PREFIX@, @PORT@ and the given @NAME@s) and run nginx in the foreground."""
    port = free_port()
    text = (NGINX_CONF_DIR / template).read_text()
    for key, value in {"PREFIX": str(workdir), "PORT": port, **values}.items():
        text = text.replace(f"@{key}@", str(value))
    leftover = sorted(set(re.findall(r"@[A-Z_]+@", text)))
    if leftover:
        raise ValueError(f"{template}: placeholders not filled: {leftover}")
    conf = workdir / f"{name}.conf"
    conf.write_text(text)
    startup_log = workdir / f"{name}-startup-error.log"
    argv = ["nginx", "-p", str(workdir), "-e", str(startup_log), "-c", str(conf)]
    return spawn(name, argv, cpus, workdir, port, (startup_log, workdir / f"{name}-error.log"))


def meshbox_proxy_config(listen_port: int, backend_port: int) -> str:
    """The static ProxyConfig YAML of the benchmark: one bound HTTP listener routing / to the backend."""
    return f"""\
listeners:
  - name: bench
    direction: OUTBOUND
    address: 127.0.0.1
    port: {listen_port}
    protocol: HTTP
    route_config: bench
    bind: true
route_configs:
  - name: bench
    virtual_hosts:
      - name: bench
        domains: ["*"]
        routes:
          - match: {{prefix: /}}
            clusters: [{{cluster: backend, weight: 1}}]
clusters:
  - name: backend
    lb_policy: ROUND_ROBIN
    service: backend.bench.svc.cluster.local
endpoints:
  - cluster_name: backend
    endpoints: [{{address: 127.0.0.1, port: {backend_port}}}]
"""


def start_meshbox_proxy(
    name: str, proxy_bin: str, workdir: Path, cpus: set[int], backend_port: int, extra_args: list[str]
) -> ServerProcess:
    """Run meshbox-proxy --config <bench config> --concurrency 1 with its stdout (the access log) in a file."""
    port, admin_port = free_port(), free_port()
    config = workdir / f"{name}.yaml"
    config.write_text(meshbox_proxy_config(port, backend_port))
    # --outbound-port 0: the capture listener (unused here, no iptables) takes any free port, not 15001.
    argv = [proxy_bin, "--config", str(config), "--concurrency", "1", "--admin-port", str(admin_port),
            "--outbound-port", "0", *extra_args]
    return spawn(name, argv, cpus, workdir, port)


def count_lines(path: Path) -> int:
    """Number of newline-terminated lines in a (possibly large) file."""
    count = 0
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            count += chunk.count(b"\n")
    return count


def first_line(path: Path) -> str:
    with contextlib.suppress(FileNotFoundError), path.open("rb") as f:
        return f.readline().decode(errors="replace").rstrip("\n")
    return ""
