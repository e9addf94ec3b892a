"""The real proxy process: no OpenSSL mapped (TLS stand-in), one thread, options parsed in a child, TLS
refused with a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from meshbox.proxy import tls_stand_in


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_running_proxy_maps_no_openssl_and_still_scrapes(kit: Any, proxy_cli: Any) -> None:
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0")
    port = kit.admin_port(proc)

    async def main() -> tuple[int, bytes, str]:
        before = _mapped(proc.pid)
        client = await kit.Client.connect(port)
        try:
            # The first scrape imports prometheus_client, whose exposition module imports ssl too.
            resp = await client.request("GET", "/stats/prometheus", host="localhost")
        finally:
            client.close()
        return resp.status, resp.body, before + _mapped(proc.pid)

    status, body, maps = kit.run(main())
    assert status == 200 and b"# TYPE istio_requests_total counter" in body
    assert "libssl" not in maps and "/_ssl." not in maps
    # Listening sockets bound by the proxy itself: no getaddrinfo, so no libuv worker threads.
    assert "Threads:\t1\n" in Path(f"/proc/{proc.pid}/status").read_text()


def test_option_errors_and_help_come_from_the_child_with_the_right_status() -> None:
    """Options are parsed in a forked child (so click never loads in the proxy): its output and exit
    status must still be the command's."""
    def proxy(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "meshbox.proxy", *args], capture_output=True, text=True,
                              timeout=30)

    helped = proxy("--help")
    assert helped.returncode == 0 and "--request-head-timeout" in helped.stdout
    bad_flag = proxy("--idle-timeout", "-1")
    assert bad_flag.returncode == 2 and "--idle-timeout" in bad_flag.stderr
    taken = subprocess.run([sys.executable, "-c", "import socket,subprocess,sys\n"
                            "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
                            "r=subprocess.run([sys.executable,'-m','meshbox.proxy','--admin-port','0',"
                            "'--outbound-port',str(s.getsockname()[1])],capture_output=True,text=True,timeout=20)\n"
                            "print(r.returncode); print(r.stderr)"], capture_output=True, text=True, timeout=30)
    code, _, stderr = taken.stdout.partition("\n")
    assert code == "1" and "Error: cannot start:" in stderr


def test_tls_use_under_the_stand_in_is_a_clear_error() -> None:
    script = (
        "from meshbox.proxy import tls_stand_in\n"
        "assert tls_stand_in.install()\n"
        "import asyncio, uvloop\n"
        "async def main():\n"
        "    try:\n"
        "        await asyncio.get_running_loop().create_connection(asyncio.Protocol, '127.0.0.1', 9, ssl=True)\n"
        "    except tls_stand_in.TlsUnavailable as exc:\n"
        "        print('refused:', exc)\n"
        "uvloop.run(main())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "refused: meshbox-proxy runs without TLS" in result.stdout


def test_stand_in_is_not_installed_once_asyncio_is_loaded() -> None:
    import ssl  # this test process: the real module stays

    assert tls_stand_in.install() is False
    assert sys.modules["ssl"] is ssl and hasattr(ssl, "OPENSSL_VERSION")
