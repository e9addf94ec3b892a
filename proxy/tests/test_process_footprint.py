"""The real proxy process: no OpenSSL mapped (TLS stand-in), no protobuf loaded (config compiled in
children), no module a config does not use, one thread, options parsed in a child, TLS refused with a
clear error."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from meshbox.proxy import tls_stand_in

# Loaded by a proxy only when its config has what they serve (resilience settings, retry policies,
# route actions, authorization policies, an egress listener; config compiling happens in children).
CONFIG_DRIVEN = ("meshbox.proxy.retry_policy", "meshbox.proxy.cluster_resilience", "meshbox.proxy.outlier_detection",
                 "meshbox.proxy.consistent_hash", "meshbox.proxy.connection_slots", "meshbox.proxy.route_actions",
                 "meshbox.proxy.rate_limit", "meshbox.proxy.authorization")
NEVER_IN_PROXY = ("meshbox.proxy.mirroring", "meshbox.proxy.passthrough", "meshbox.proxy.config_compiler",
                  "meshbox.proxy.resilience_compiler", "meshbox.proxy.route_actions_compiler",
                  "meshbox.proxy.compile_child", "json", "ipaddress", "http")
# Runs the proxy command with an exit hook that writes the modules it had loaded to the file named first.
_WITH_MODULE_LIST = ("import atexit, sys\n"
                     "listing = sys.argv.pop(1)\n"
                     "atexit.register(lambda: open(listing, 'w').write('\\n'.join(sorted(sys.modules))))\n"
                     "from meshbox.proxy.entry import main\n"
                     "main()\n")


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid``, zombies included (this kernel has no /proc/PID/task/TID/children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_running_proxy_maps_no_openssl_and_still_scrapes(kit: Any, proxy_cli: Any) -> None:
    proc = proxy_cli("--admin-port", "0", "--outbound-port", "0")
    port = kit.admin_port(proc)

    async def main() -> tuple[int, bytes, str]:
        before = _mapped(proc.pid)
        client = await kit.Client.connect(port)
        try:
            # The first scrape imports the exposition module: it must not bring OpenSSL in either.
            resp = await client.request("GET", "/stats/prometheus", host="localhost")
        finally:
            client.close()
        return resp.status, resp.body, before + _mapped(proc.pid)

    status, body, maps = kit.run(main())
    assert status == 200 and b"# TYPE istio_requests_total counter" in body
    assert "libssl" not in maps and "/_ssl." not in maps
    assert "libcrypto" not in maps and "/_hashlib." not in maps  # hashlib (3.4 MB resident) stays out too
    if importlib.util.find_spec("meshbox.proxy.glibc_malloc") is not None:  # the compiled build's malloc_trim
        assert "/_ctypes." not in maps and "libffi" not in maps  # ctypes (0.37 MB resident) stays out
    # Listening sockets bound by the proxy itself: no getaddrinfo, so no libuv worker threads.
    assert "Threads:\t1\n" in Path(f"/proc/{proc.pid}/status").read_text()


def test_config_file_and_posted_config_never_load_protobuf_in_the_proxy(kit: Any, proxy_cli: Any,
                                                                       tmp_path: Path) -> None:
    """--config and POST /config are both compiled in forked children: the proxy serves both configs
    and dumps them, yet never maps protobuf's upb extension (nor the libstdc++ it links), also while it
    traces (its spans go out as text datagrams, received here)."""
    first, second = kit.free_port(), kit.free_port()
    config_file = tmp_path / "proxy.yaml"
    config_file.write_text(
        f"listeners: [{{name: http, direction: OUTBOUND, address: 127.0.0.1, port: {first}, protocol: HTTP,"
        " route_config: rc, bind: true}]\n"
        "route_configs: [{name: rc, virtual_hosts: [{name: all, domains: ['*'],"
        " routes: [{match: {prefix: /}, clusters: [{cluster: a}]}]}]}]\n"
        "clusters: [{name: a}]\n"
        "endpoints: [{cluster_name: a, endpoints: [{address: 127.0.0.1, port: BACKEND}]}]\n")

    async def main() -> tuple[str, list[int]]:
        backend = await kit.Backend("a").start()
        config_file.write_text(config_file.read_text().replace("BACKEND", str(backend.port)))
        spans = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        spans.bind(str(tmp_path / "spans.sock"))
        spans.settimeout(5)
        proc = proxy_cli("--config", str(config_file), "--admin-port", "0", "--outbound-port", "0",
                         "--trace-socket", str(tmp_path / "spans.sock"), "--trace-sampling", "100")
        port = kit.admin_port(proc)
        try:
            assert (await kit.get(first)).header(b"x-backend") == b"a"
            assert (await asyncio.to_thread(spans.recv, 65536)).startswith(b"1\tclient\t")
            client = await kit.Client.connect(port)
            try:
                body = kit.http_config(second, {"a": [backend.port]}).SerializeToString()
                applied = await client.request("POST", "/config", host="localhost", body=body)
                assert applied.status == 200 and applied.body == b"applied version 2\n", applied.body
                bad = await client.request("POST", "/config", host="localhost", body=b"\xff\xff")
                assert bad.status == 400 and b"not a serialized meshbox.api.v1.ProxyConfig" in bad.body
                dump = (await client.request("GET", "/config_dump", host="localhost")).json()
            finally:
                client.close()
            assert dump["version"] == 2 and dump["config"]["listeners"][0]["port"] == second
            assert (await kit.get(second)).header(b"x-backend") == b"a"
            return _mapped(proc.pid), _children(proc.pid)
        finally:
            backend.close()
            spans.close()

    maps, children = kit.run(main())
    assert "uvloop" in maps  # the maps of the proxy itself, not of its command-line child
    assert "_upb" not in maps and "protobuf" not in maps and "libstdc++" not in maps
    assert children == [], f"compiling children not reaped: {children}"


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
    assert "refused: meshbox-proxy does TLS through its own layer only" in result.stdout


def test_stand_in_is_not_installed_once_asyncio_is_loaded() -> None:
    import ssl  # this test process: the real module stays

    assert tls_stand_in.install() is False
    assert sys.modules["ssl"] is ssl and hasattr(ssl, "OPENSSL_VERSION")


async def _loaded_modules(kit: Any, config: Any, tmp_path: Path, port: int, targets: list[str],
                          *args: str) -> tuple[list[int], set[str]]:
    """Run the proxy command with ``config`` (written to a --config file) and ``args``, send a GET for
    each target through ``port``, quit it through the admin API: the statuses, and the modules the proxy
    had loaded."""
    from google.protobuf import json_format

    config_path = tmp_path / f"modules-{port}.yaml"
    config_path.write_text(json_format.MessageToJson(config, preserving_proto_field_name=True))
    listing = tmp_path / f"modules-{port}.txt"
    with (tmp_path / f"modules-{port}.log").open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", _WITH_MODULE_LIST, str(listing), "--config", str(config_path),
                                 "--admin-port", "0", "--outbound-port", "0", *args],
                                stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        admin = await asyncio.to_thread(kit.admin_port, proc)
        statuses = [(await kit.get(port, target)).status for target in targets]
        client = await kit.Client.connect(admin)
        try:
            await client.request("POST", "/quitquitquit", host="localhost")
        finally:
            client.close()
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return statuses, set(listing.read_text().split())


def _workload_certificate(directory: Path) -> Path:
    """A workload certificate directory (the agent's three files) for ``--cert-dir``."""
    from conftest import Pki  # type: ignore[import-not-found]  # the root conftest's test PKI

    pki = Pki()
    root, root_key = pki.root("footprint root")
    leaf, key = pki.leaf(root, root_key, uris=("spiffe://cluster.local/ns/default/sa/footprint",))
    directory.mkdir()
    (directory / "key.pem").write_bytes(pki.key_pem(key))
    (directory / "cert-chain.pem").write_bytes(pki.pem(leaf))
    (directory / "root-cert.pem").write_bytes(pki.pem(root))
    return directory


def test_config_driven_modules_load_only_for_a_config_that_uses_them(kit: Any, tmp_path: Path) -> None:
    """A plain HTTP config leaves the resilience, route-action and authorization modules out of the
    proxy process (one with a workload certificate: TLS loaded, the stand-in not even imported); a config
    with retries, circuit breakers, outlier detection, consistent hashing,
    header operations, a rate limit and an authorization policy has them loaded, and works."""
    route = {"clusters": [{"cluster": "a", "weight": 100}],
             "retries": {"attempts": 2, "retry_on": ["5xx"]},
             "request_headers": {"set": [{"name": "x-route", "value": "r"}]},
             "rate_limit": {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "1s"}}
    deny = {"name": "deny-admin", "namespace": "default",
            "spec": {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}]}}

    async def main() -> tuple[list[int], set[str], list[int], set[str]]:
        backend = await kit.Backend("a").start()
        try:
            port = kit.free_port()
            plain = kit.http_config(port, {"a": [backend.port]})
            plain_statuses, plain_modules = await _loaded_modules(
                kit, plain, tmp_path, port, ["/"], "--cert-dir", str(_workload_certificate(tmp_path / "certs")))
            port = kit.free_port()
            used = kit.http_config(port, {"a": [backend.port]}, routes=[route], direction="INBOUND", lb="RING_HASH")
            used.listeners[0].authorization_policies.add().CopyFrom(_message(deny, "NamedAuthorizationPolicy"))
            cluster = used.clusters[0]
            cluster.circuit_breakers.max_connections = 8
            cluster.outlier_detection.consecutive_5xx = 3
            cluster.hash_policy.header_name = "x-user"
            used_statuses, used_modules = await _loaded_modules(kit, used, tmp_path, port, ["/", "/admin"])
        finally:
            backend.close()
        return plain_statuses, plain_modules, used_statuses, used_modules

    plain_statuses, plain_modules, used_statuses, used_modules = kit.run(main())
    assert plain_statuses == [200]
    # TLS through _ssl alone: the name ``ssl`` stays with the stand-in (ssl.py's enums never load).
    assert {"meshbox.proxy.http_proxy", "meshbox.proxy.workload_tls", "_ssl",
            "meshbox.proxy.tls_stand_in"} <= plain_modules
    unexpected = plain_modules & {*CONFIG_DRIVEN, *NEVER_IN_PROXY}
    assert not unexpected, sorted(unexpected)
    assert used_statuses == [200, 403]
    assert set(CONFIG_DRIVEN) <= used_modules, sorted(set(CONFIG_DRIVEN) - used_modules)
    assert not used_modules & set(NEVER_IN_PROXY), sorted(used_modules & set(NEVER_IN_PROXY))


def _message(data: dict[str, Any], name: str) -> Any:
    from google.protobuf import json_format

    from meshbox.api.v1 import proxy_config_pb2 as pc

    return json_format.ParseDict(data, getattr(pc, name)())
