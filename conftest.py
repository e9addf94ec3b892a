"""Fixtures shared by every test folder: root checks, network namespaces, UID 1337 processes.

Tests that need root (namespaces, iptables, setpriv) use the ``root`` fixture: under CI
(CI=true) a missing privilege is a failure, elsewhere a skip that says why.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
PROXY_UID = 1337


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a listener a test starts a moment later.

    Picked below the kernel's ephemeral range: a port from the ephemeral range can be taken in the
    meantime by any outgoing connection on this busy machine; one below it only by another listener.
    """
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    pick = random.Random()
    for _ in range(200):
        port = pick.randrange(max(1024, low - 12000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low} on 127.0.0.1")


def need(condition: bool, why: str) -> None:
    """Fail under CI, skip elsewhere, when a test's precondition is missing."""
    if condition:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {why}")
    pytest.skip(why)


@pytest.fixture
def root() -> None:
    """The test needs root (network namespaces, iptables, setpriv)."""
    need(os.geteuid() == 0, "needs root for network namespaces and iptables (run the suite as root)")
    for tool in ("ip", "iptables", "setpriv"):
        need(shutil.which(tool) is not None, f"needs {tool} (make bootstrap installs it)")


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=check, capture_output=True, text=True)


@dataclass
class Netns:
    """A network namespace made by a test; removed with every process started in it."""

    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace and wait for it."""
        return _run(*self.cmd(*args), check=check)

    def popen(self, *args: str, uid: int | None = None, **kwargs: object) -> subprocess.Popen[bytes]:
        """Start a long-running process in the namespace (optionally as ``uid``); stopped at teardown."""
        prefix = self.cmd()
        if uid is not None:
            prefix += ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
        proc = subprocess.Popen([*prefix, *args], start_new_session=True, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(timeout=5)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        _run("ip", "netns", "delete", self.name, check=False)


class NetnsFactory:
    """Makes uniquely named namespaces (``mbt-<tag>-<random>``) with lo up, and links them."""

    def __init__(self) -> None:
        self.made: list[Netns] = []
        self._prefix = f"mbt{uuid.uuid4().hex[:6]}"
        self._links = 0

    def __call__(self, tag: str = "ns") -> Netns:
        ns = Netns(f"{self._prefix}-{tag}")
        _run("ip", "netns", "add", ns.name)
        self.made.append(ns)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def link(self, a: Netns, a_cidr: str, b: Netns, b_cidr: str) -> None:
        """Connect two namespaces with a veth pair and give each end an address (e.g. 10.99.0.1/24)."""
        self._links += 1
        va, vb = f"{self._prefix[:8]}a{self._links}", f"{self._prefix[:8]}b{self._links}"
        _run("ip", "link", "add", va, "netns", a.name, "type", "veth", "peer", "name", vb, "netns", b.name)
        for ns, dev, cidr in ((a, va, a_cidr), (b, vb, b_cidr)):
            ns.run("ip", "addr", "add", cidr, "dev", dev)
            ns.run("ip", "link", "set", dev, "up")

    def cleanup(self) -> None:
        for ns in reversed(self.made):
            ns.stop()


@pytest.fixture
def netns(root: None) -> Iterator[NetnsFactory]:
    """Factory of network namespaces; everything it made is removed after the test."""
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


def make_traversable_for_others(path: Path) -> None:
    """Give 'others' search (x) permission on every ancestor of path, so UID 1337 can reach it.

    Only the execute bit is added: directory listings stay private.
    """
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


@pytest.fixture
def uid1337_python(root: None) -> str:
    """An interpreter path (this venv's) that a process running as UID 1337 can execute."""
    python = Path(sys.executable)
    make_traversable_for_others(REPO)
    make_traversable_for_others(python.parent)
    probe = _run("setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_UID}", "--clear-groups", "--",
                 str(python), "-c", "import meshbox.api", check=False)
    need(probe.returncode == 0, f"UID {PROXY_UID} cannot run {python}: {probe.stderr.strip()}")
    return str(python)


class Pki:
    """Test certificates made with `cryptography`: roots, leaves with any SANs, validity and signer.

    ``leaf(..., signer=other_root)`` signs with another key (a wrongly signed certificate when
    ``issuer_name`` still names the real root: a forgery).
    """

    def __init__(self) -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.x509, self.hashes, self.serialization, self.ec, self.NameOID = x509, hashes, serialization, ec, NameOID
        self.now = datetime.datetime.now(datetime.UTC)
        self.delta = datetime.timedelta

    def key(self):  # type: ignore[no-untyped-def]
        return self.ec.generate_private_key(self.ec.SECP256R1())

    def key_pem(self, key) -> bytes:  # type: ignore[no-untyped-def]
        s = self.serialization
        return key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())

    def pem(self, cert) -> bytes:  # type: ignore[no-untyped-def]
        return cert.public_bytes(self.serialization.Encoding.PEM)

    def name(self, cn: str):  # type: ignore[no-untyped-def]
        return self.x509.Name([self.x509.NameAttribute(self.NameOID.COMMON_NAME, cn)])

    def root(self, cn: str = "test root"):  # type: ignore[no-untyped-def]
        """(certificate, key) of a self-signed CA."""
        key = self.key()
        x = self.x509
        cert = (x.CertificateBuilder().subject_name(self.name(cn)).issuer_name(self.name(cn))
                .public_key(key.public_key()).serial_number(x.random_serial_number())
                .not_valid_before(self.now - self.delta(hours=1)).not_valid_after(self.now + self.delta(days=30))
                .add_extension(x.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False, data_encipherment=False,
                                          key_agreement=False, encipher_only=False, decipher_only=False),
                               critical=True)
                .sign(key, self.hashes.SHA256()))
        return cert, key

    def leaf(self, issuer_cert, signer_key, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = (),  # type: ignore[no-untyped-def]
             ips: tuple[str, ...] = (), key=None, not_before=None, not_after=None):
        """(certificate, key) of an end-entity certificate naming ``issuer_cert`` as issuer."""
        import ipaddress

        key = key or self.key()
        x = self.x509
        sans = [x.UniformResourceIdentifier(u) for u in uris] + [x.DNSName(d) for d in dns]
        sans += [x.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (x.CertificateBuilder().subject_name(self.name("leaf")).issuer_name(issuer_cert.subject)
                   .public_key(key.public_key()).serial_number(x.random_serial_number())
                   .not_valid_before(not_before or self.now - self.delta(minutes=5))
                   .not_valid_after(not_after or self.now + self.delta(hours=2))
                   .add_extension(x.BasicConstraints(ca=False, path_length=None), critical=True))
        if sans:
            builder = builder.add_extension(x.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer_key, self.hashes.SHA256()), key

    def csr(self, key=None, *, uris: tuple[str, ...] = (), dns: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        """(CSR PEM text, key)."""
        key = key or self.key()
        x = self.x509
        builder = x.CertificateSigningRequestBuilder().subject_name(self.name("workload"))
        sans = [x.UniformResourceIdentifier(u) for u in uris] + [x.DNSName(d) for d in dns]
        if sans:
            builder = builder.add_extension(x.SubjectAlternativeName(sans), critical=False)
        csr = builder.sign(key, self.hashes.SHA256())
        return csr.public_bytes(self.serialization.Encoding.PEM).decode(), key


@dataclass
class PrometheusRun:
    """A real Prometheus (Debian's package) started by a test, on a free loopback port; stopped by PID."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_prometheus(workdir: Path, config: str, timeout: float = 30.0) -> PrometheusRun:
    """Start ``prometheus`` with ``config`` (YAML text) and wait until it is ready; needs the binary."""
    binary = shutil.which("prometheus")
    need(binary is not None, "needs Debian's prometheus package (make bootstrap installs it)")
    assert binary is not None
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(config)
    port = free_port()
    log = workdir / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, f"--config.file={workdir / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=warn"], stdout=out, stderr=subprocess.STDOUT)
    run = PrometheusRun(proc, f"http://127.0.0.1:{port}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{run.url}/-/ready", timeout=1) as reply:
            if reply.status == 200:
                return run
        time.sleep(0.1)
    run.stop()
    raise RuntimeError(f"prometheus not ready within {timeout}s: {log.read_text(errors='replace')[-2000:]}")
