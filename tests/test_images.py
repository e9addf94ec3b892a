"""The container images, built with podman here and smoke-run in network namespaces the test made.

Builds all three images with deploy/images/build.sh --local-base (a debootstrapped Debian base,
cached under .cache/images/, since no image registry is reachable here; wheels built on the
host, installed offline in --network none builds), then runs each one:
- init: programs the capture rules with --cap-add NET_ADMIN inside the test's namespace;
- proxy: meshbox-proxy with a static config answers /ready;
- control plane: meshbox-discovery serves a gRPC discovery response and configures the proxy
  image's agent until it is ready; meshbox-webhook answers /ready over TLS.
Images are tagged uniquely per run and removed afterwards; the base images stay cached.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Netns, NetnsFactory, need
from meshbox.injector.certs import generate_tls_material, write_serving_pair

REPO = Path(__file__).resolve().parent.parent
HUB = "localhost/meshbox-test"
ENV = {**os.environ, "CONTAINERS_CONF": str(REPO / "deploy" / "images" / "containers.conf")}
COMPONENTS = ("init", "proxy", "control-plane")


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, env=ENV, check=check, timeout=timeout)


@pytest.fixture(scope="module")
def images() -> Iterator[dict[str, str]]:
    need(os.geteuid() == 0, "building images needs root (debootstrap, rootful podman)")
    for tool in ("podman", "runc", "debootstrap", "ip"):
        need(shutil.which(tool) is not None, f"needs {tool} (apt-get install podman runc debootstrap)")
    tag = f"t{uuid.uuid4().hex[:8]}"
    built = {c: f"{HUB}/{c}:{tag}" for c in COMPONENTS}
    try:
        result = subprocess.run(
            [str(REPO / "deploy/images/build.sh"), "--local-base", "--engine", "podman", "--hub", HUB, "--tag", tag],
            capture_output=True, text=True, env={**ENV, "PYTHON": sys.executable}, timeout=420,
        )
        assert result.returncode == 0, f"image build failed:\n{result.stderr[-4000:]}"
        yield built
    finally:
        for image in built.values():
            podman("rmi", "-f", image, check=False)


@pytest.fixture
def container_names() -> Iterator[Callable[[str], str]]:
    made: list[str] = []

    def name(tag: str) -> str:
        made.append(f"mbt-{tag}-{uuid.uuid4().hex[:6]}")
        return made[-1]

    yield name
    for n in made:
        podman("rm", "-f", "-t", "1", n, check=False)


def in_ns(ns: Netns) -> str:
    return f"ns:/run/netns/{ns.name}"


def wait_for(ns: Netns, *cmd: str, attempts: int = 100, delay: float = 0.1) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in the namespace until it succeeds (bounded: attempts x delay)."""
    result = ns.run(*cmd, check=False)
    for _ in range(attempts):
        if result.returncode == 0:
            break
        time.sleep(delay)
        result = ns.run(*cmd, check=False)
    return result


def logs(name: str) -> str:
    out = podman("logs", name, check=False)
    return out.stdout + out.stderr


def test_images_are_small_and_run_as_intended(images: dict[str, str]) -> None:
    users = {}
    for component, image in images.items():
        info = json.loads(podman("image", "inspect", image).stdout)[0]
        users[component] = info["Config"].get("User", "")
        assert info["Size"] < 400 * 1024 * 1024, f"{component}: {info['Size']} bytes"
    assert users["proxy"] == "1337:1337"
    assert users["control-plane"] not in ("", "0", "root")
    # Each image carries only its component's packages.
    listing = "import importlib.metadata as m; print(sorted(d.metadata['Name'] for d in m.distributions()))"
    installed = {
        c: podman("run", "--rm", "--network", "none", "--entrypoint", "/opt/meshbox/bin/python", image,
                  "-c", listing).stdout
        for c, image in images.items()
    }
    assert "meshbox-init" in installed["init"] and "meshbox-proxy" not in installed["init"]
    # The init image needs no gRPC and no event loop (issue 2's image split).
    assert "grpcio" not in installed["init"] and "uvloop" not in installed["init"]
    assert "meshbox-proxy" in installed["proxy"] and "meshbox-agent" in installed["proxy"]
    assert "meshbox-discovery" not in installed["proxy"] and "meshbox-injector" not in installed["proxy"]
    assert "meshbox-discovery" in installed["control-plane"] and "meshbox-injector" in installed["control-plane"]
    assert "uvloop" not in installed["control-plane"] and "meshbox-init" not in installed["control-plane"]
    # The proxy image carries the compiled hot path (proxy/setup.py), not only the pure-Python sources.
    where = podman("run", "--rm", "--network", "none", "--entrypoint", "/opt/meshbox/bin/python", images["proxy"],
                   "-c", "import meshbox.proxy.http_proxy as m; print(m.__file__)").stdout
    assert where.strip().endswith(".so"), where


def test_init_image_programs_capture_rules_in_its_namespace(
    images: dict[str, str], netns: NetnsFactory, container_names: Callable[[str], str]
) -> None:
    ns = netns("img-init")
    run = podman("run", "--rm", "--name", container_names("init"), "--network", in_ns(ns),
                 "--cap-drop", "ALL", "--cap-add", "NET_ADMIN", "--cap-add", "NET_RAW",
                 images["init"], "-p", "15001", "-u", "1337", check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    rules = "".join(ns.run(tool, "-t", "nat", check=False).stdout
                    for tool in ("iptables-legacy-save", "iptables-nft-save"))
    assert "--to-ports 15001" in rules, rules
    assert "--uid-owner 1337" in rules, rules


def test_init_image_without_net_admin_fails_loudly(images: dict[str, str], netns: NetnsFactory,
                                                   container_names: Callable[[str], str]) -> None:
    ns = netns("img-init-nocap")
    run = podman("run", "--rm", "--name", container_names("init-nocap"), "--network", in_ns(ns),
                 "--cap-drop", "ALL", images["init"], "-p", "15001", "-u", "1337", check=False)
    assert run.returncode != 0
    assert run.stderr.strip(), "a failed init must say why"


STATIC_CONFIG = """\
listeners:
  - name: smoke
    address: 127.0.0.1
    port: 18080
    protocol: TCP
    direction: OUTBOUND
    bind: true
    cluster: echo
clusters:
  - name: echo
endpoints:
  - cluster_name: echo
    endpoints:
      - address: 127.0.0.1
        port: 18081
"""


def test_proxy_image_answers_ready_with_a_static_config(
    images: dict[str, str], netns: NetnsFactory, container_names: Callable[[str], str], tmp_path: Path
) -> None:
    ns = netns("img-proxy")
    config_dir = tmp_path / "cfg"
    config_dir.mkdir(mode=0o755)
    (config_dir / "static.yaml").write_text(STATIC_CONFIG)
    (config_dir / "static.yaml").chmod(0o644)
    name = container_names("proxy")
    podman("run", "-d", "--name", name, "--network", in_ns(ns), "-v", f"{config_dir}:/cfg:ro,Z",
           "--entrypoint", "meshbox-proxy", images["proxy"], "--config", "/cfg/static.yaml", "--admin-port", "15000")
    ready = wait_for(ns, "curl", "-sf", "http://127.0.0.1:15000/ready")
    assert ready.returncode == 0, logs(name)
    podman("stop", "-t", "5", name)


def test_control_plane_image_serves_discovery_the_proxy_image_and_the_webhook(
    images: dict[str, str], netns: NetnsFactory, container_names: Callable[[str], str], tmp_path: Path
) -> None:
    ns = netns("img-cp")
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o755)
    (registry / "service-two.yaml").write_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: service-two, namespace: default}\n"
        "spec:\n  clusterIP: 10.96.0.20\n  selector: {app: service-two}\n"
        "  ports: [{name: http-status, port: 80, targetPort: 8080}]\n"
    )
    (registry / "service-two.yaml").chmod(0o644)
    discovery = container_names("discovery")
    podman("run", "-d", "--name", discovery, "--network", in_ns(ns), "-v", f"{registry}:/registry:ro,Z",
           images["control-plane"], "--plaintext", "--registry-dir", "/registry", "--grpc-port", "15010",
           "--http-port", "15014")
    ready = wait_for(ns, "curl", "-sf", "http://127.0.0.1:15014/ready")
    assert ready.returncode == 0, logs(discovery)

    # A real discovery request over gRPC from inside the namespace, as an agent would send it.
    client = """
import grpc
from meshbox.api.v1 import discovery_pb2, discovery_pb2_grpc, proxy_config_pb2
node = discovery_pb2.Node(id="client.default", pod_name="client", pod_namespace="default", pod_ip="10.244.0.5")
url = "type.googleapis.com/meshbox.api.v1.Cluster"
with grpc.insecure_channel("127.0.0.1:15010") as channel:
    stub = discovery_pb2_grpc.DiscoveryServiceStub(channel)
    reply = next(stub.StreamResources(iter([discovery_pb2.DiscoveryRequest(node=node, type_url=url)]), timeout=10))
    for any_ in reply.resources:
        cluster = proxy_config_pb2.Cluster()
        any_.Unpack(cluster)
        print(cluster.name)
"""
    out = ns.run(sys.executable, "-c", client, check=False)
    assert out.returncode == 0, out.stderr + logs(discovery)
    assert "outbound|80||service-two.default.svc.cluster.local" in out.stdout.split()

    # The proxy image as injected (entrypoint meshbox-agent, args `sidecar --discovery-address`)
    # gets its config from this discovery server and turns ready.
    agent = container_names("agent")
    podman("run", "-d", "--name", agent, "--network", in_ns(ns), "-e", "POD_NAME=client",
           "-e", "POD_NAMESPACE=default", "-e", "POD_IP=127.0.0.1",
           images["proxy"], "sidecar", "--plaintext", "--discovery-address", "127.0.0.1:15010")
    ready = wait_for(ns, "curl", "-sf", "http://127.0.0.1:15020/healthz/ready")
    assert ready.returncode == 0, logs(agent) + logs(discovery)
    assert "applied config" in logs(agent)
    podman("stop", "-t", "5", agent)

    tls = tmp_path / "tls"
    tls.mkdir(mode=0o755)
    material = generate_tls_material(["meshbox-webhook.meshbox-system.svc"])
    write_serving_pair(material, tls / "tls.crt", tls / "tls.key")
    (tls / "tls.key").chmod(0o644)  # the image's non-root user must read it (a Secret volume does the same)
    (tls / "ca.crt").write_bytes(material.ca_cert_pem)
    webhook = container_names("webhook")
    podman("run", "-d", "--name", webhook, "--network", in_ns(ns), "-v", f"{tls}:/tls:ro,Z",
           "--entrypoint", "meshbox-webhook", images["control-plane"],
           "--tls-cert-file", "/tls/tls.crt", "--tls-key-file", "/tls/tls.key", "--port", "15017")
    ready = wait_for(ns, "curl", "-sf", "--cacert", str(tls / "ca.crt"),
                     "--resolve", "meshbox-webhook.meshbox-system.svc:15017:127.0.0.1",
                     "https://meshbox-webhook.meshbox-system.svc:15017/ready")
    assert ready.returncode == 0, logs(webhook)
    for name in (discovery, webhook):
        podman("stop", "-t", "5", name)
