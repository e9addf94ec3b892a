"""The meshbox-discovery command as a real process: startup, serving, a file edit, SIGTERM, bad input."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from meshbox.discovery.payloads import PUSH_ORDER, ROUTE

BIN = Path(sys.executable).with_name("meshbox-discovery")
STARTED = re.compile(r"serving discovery gRPC on 127\.0\.0\.1:(\d+), HTTP \(/ready, /metrics\) on 127\.0\.0\.1:(\d+)")


def start(registry_dir: Path) -> tuple[subprocess.Popen[str], int, int]:
    proc = subprocess.Popen(
        [str(BIN), "--plaintext", "--registry-dir", str(registry_dir), "--listen-address", "127.0.0.1",
         "--grpc-port", "0", "--http-port", "0", "--poll-interval", "0.1", "--debounce", "0.05"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if match := STARTED.search(line):
            return proc, int(match.group(1)), int(match.group(2))
    proc.kill()
    raise AssertionError(f"meshbox-discovery did not start: {proc.stderr.read()}")


def test_serves_pushes_and_stops_on_sigterm(kit: Any, registry_dir: Path) -> None:
    proc, grpc_port, http_port = start(registry_dir)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/ready", timeout=5) as resp:
            assert resp.status == 200

        async def agent_session() -> None:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                agent = kit.AgentClient(channel, kit.node("service-one-a", "10.1.0.11"))
                agent.subscribe_all()
                first = await agent.receive_all()
                assert set(first) == set(PUSH_ORDER)
                for response in first.values():
                    await agent.ack(response)
                kit.write_yaml(registry_dir / "rule.yaml", [kit.route_rule("all-v2", "service-two", {"v2": 100})])
                pushed = [await agent.receive() for _ in range(3)]
                assert pushed[-1].type_url == ROUTE
                agent.close()

        asyncio.run(agent_session())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_invocations_say_what_is_wrong(tmp_path: Path) -> None:
    missing = subprocess.run([str(BIN), "--plaintext", "--registry-dir", str(tmp_path / "nope"), "--grpc-port", "0",
                              "--http-port", "0"], capture_output=True, text=True, timeout=30)
    assert missing.returncode == 1
    assert f"registry directory {tmp_path / 'nope'} does not exist" in missing.stderr
    neither = subprocess.run([str(BIN)], capture_output=True, text=True, timeout=30)
    assert neither.returncode == 2 and "exactly one registry source" in neither.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        for flags, what in ((["--grpc-port", port, "--http-port", "0"], "gRPC"),
                            (["--grpc-port", "0", "--http-port", port], "HTTP")):
            busy = subprocess.run([str(BIN), "--plaintext", "--registry-dir", str(tmp_path),
                                   "--listen-address", "127.0.0.1", *flags], capture_output=True, text=True,
                                   timeout=30)
            assert busy.returncode == 1
            assert f"cannot listen for {what} on 127.0.0.1:{port}" in busy.stderr
            assert "Traceback" not in busy.stderr
    helped = subprocess.run([str(BIN), "--help"], capture_output=True, text=True, timeout=30)
    assert helped.returncode == 0 and "--registry-dir" in helped.stdout and "--kubernetes" in helped.stdout


def test_bad_ca_invocations_say_what_is_wrong(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    registry.mkdir()
    base = [str(BIN), "--registry-dir", str(registry), "--listen-address", "127.0.0.1", "--grpc-port", "0",
            "--http-port", "0", "--ca-port", "0"]
    (tmp_path / "ca").mkdir()
    no_tokens = subprocess.run([*base, "--ca-dir", str(tmp_path / "ca")], capture_output=True, text=True, timeout=30)
    assert no_tokens.returncode == 1
    assert "needs a way to check tokens: --local-token-key FILE or --token-review-url URL" in no_tokens.stderr
    (tmp_path / "key").write_text("00" * 32)
    key_alone = subprocess.run([*base, "--plaintext", "--local-token-key", str(tmp_path / "key")],
                               capture_output=True, text=True, timeout=30)
    assert key_alone.returncode == 2 and "CA options need --ca-dir" in key_alone.stderr
    neither = subprocess.run(base, capture_output=True, text=True, timeout=30)
    assert neither.returncode == 2 and "give --ca-dir DIR (the mesh CA, mutual TLS) or --plaintext" in neither.stderr
    (tmp_path / "ca" / "ca.crt").write_text("not a certificate")
    (tmp_path / "ca" / "ca.key").write_text("not a key")
    broken = subprocess.run([*base, "--ca-dir", str(tmp_path / "ca"), "--local-token-key", str(tmp_path / "key")],
                            capture_output=True, text=True, timeout=30)
    assert broken.returncode == 1
    assert f"{tmp_path / 'ca' / 'ca.crt'}: not PEM certificates" in broken.stderr
    assert "Traceback" not in broken.stderr
    (tmp_path / "bad-key").write_text("zz")
    (tmp_path / "ca2").mkdir()
    bad_key = subprocess.run([*base, "--ca-dir", str(tmp_path / "ca2"), "--local-token-key", str(tmp_path / "bad-key")],
                             capture_output=True, text=True, timeout=30)
    assert bad_key.returncode == 1 and "--local-token-key" in bad_key.stderr and "Traceback" not in bad_key.stderr
