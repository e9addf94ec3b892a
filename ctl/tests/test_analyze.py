"""meshctl analyze as the installed console script, on manifest files written as Istio users write them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")

REVIEWS = """
apiVersion: v1
kind: Service
metadata:
  name: reviews
  labels: {app: reviews}
spec:
  ports:
  - port: 9080
    name: http
  selector:
    app: reviews
"""
DEPLOYMENT = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: reviews-{v}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: reviews, version: {v}}}
  template:
    metadata:
      labels: {{app: reviews, version: {v}}}
    spec:
      containers:
      - name: reviews
        image: gcr.io/google_containers/echoserver:1.4
        ports:
        - containerPort: 9080
"""
DESTINATION_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
"""
VIRTUAL_SERVICE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: reviews
        subset: v2
  - route:
    - destination:
        host: reviews
        subset: v1
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MESHCTL, "analyze", *args], capture_output=True, text=True, timeout=60)


def write_bookinfo(directory: Path) -> None:
    (directory / "reviews.yaml").write_text("---".join([REVIEWS, DEPLOYMENT.format(v="v1"),
                                                        DEPLOYMENT.format(v="v2")]))
    (directory / "routing").mkdir()
    (directory / "routing" / "destination-rule.yaml").write_text(DESTINATION_RULE)
    (directory / "routing" / "virtual-service.yml").write_text(VIRTUAL_SERVICE)


def test_clean_manifests_exit_zero(tmp_path: Path) -> None:
    write_bookinfo(tmp_path)
    result = run("-f", str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "no problems found\n")


def test_app_protocol_says_the_protocol_instead_of_the_name(tmp_path: Path) -> None:
    write_bookinfo(tmp_path)
    reviews = tmp_path / "reviews.yaml"
    reviews.write_text(reviews.read_text().replace("    name: http\n", "    name: web\n    appProtocol: http\n", 1))
    result = run("-f", str(tmp_path))
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "no problems found\n")


def test_errors_exit_one_with_one_line_per_finding(tmp_path: Path) -> None:
    write_bookinfo(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text(VIRTUAL_SERVICE.replace("name: reviews", "name: reviews-test").replace("subset: v2", "subset: v3")
                      + "    corsPolicy:\n      allowOrigins:\n      - exact: https://example.com\n")
    extra = tmp_path / "extra.yaml"
    extra.write_text(VIRTUAL_SERVICE.replace("reviews", "ratings") + "---"
                     + REVIEWS.replace("name: http", "name: web").replace("reviews", "details"))
    result = run("-f", str(tmp_path / "reviews.yaml"), "-f", str(tmp_path / "routing"), "-f", str(broken),
                 "-f", str(extra))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"Error [MB0105] VirtualService default/reviews-test spec.http[1].corsPolicy: not implemented by meshbox's "
        f"proxy yet ({broken})",
        f"Warning [MB0107] Service default/details spec.ports[0].name: 'web' is not <protocol>[-<suffix>] with a "
        "known protocol (http, http2, https, grpc, grpc-web, tcp, tls, mongo, mysql, redis, udp): proxied at L4 (TCP) "
        f"({extra})",
        f"Warning [MB0108] Service default/details spec.selector: no workload in these files has labels "
        f"{{'app': 'details'}} ({extra})",
        f"Error [MB0101] VirtualService default/ratings spec.hosts[0]: no Service or ServiceEntry has host "
        f"ratings.default.svc.cluster.local ({extra})",
        f"Error [MB0102] VirtualService default/ratings spec.http[0].route[0].destination.subset: subset 'v2' of "
        f"ratings.default.svc.cluster.local is not defined (no DestinationRule for this host) ({extra})",
        f"Error [MB0102] VirtualService default/ratings spec.http[1].route[0].destination.subset: subset 'v1' of "
        f"ratings.default.svc.cluster.local is not defined (no DestinationRule for this host) ({extra})",
    ]


def test_conflicts_unused_subsets_and_port_names(tmp_path: Path) -> None:
    write_bookinfo(tmp_path)
    (tmp_path / "more.yaml").write_text(
        VIRTUAL_SERVICE.replace("name: reviews\n", "name: reviews-again\n", 1) + "---"
        + DESTINATION_RULE.replace("version: v2", "version: v9").replace("name: reviews", "name: reviews-canary")
        + "---\napiVersion: v1\nkind: Service\nmetadata: {name: db}\nspec:\n  ports: [{port: 5432}]\n"
        "  selector: {app: db}\n")
    result = run("-f", str(tmp_path))
    more = tmp_path / "more.yaml"
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"Warning [MB0107] Service default/db spec.ports[0].name: unnamed: proxied at L4 (TCP); name it http or "
        f"http-<suffix> to route HTTP ({more})",
        f"Warning [MB0108] Service default/db spec.selector: no workload in these files has labels {{'app': 'db'}} "
        f"({more})",
        f"Warning [MB0108] DestinationRule default/reviews-canary spec.subsets[1].labels: no workload of "
        f"reviews.default.svc.cluster.local has labels {{'version': 'v9'}} ({more})",
        f"Error [MB0104] DestinationRule default/reviews spec.host: reviews.default.svc.cluster.local already has "
        f"DestinationRule default/reviews-canary; this one is not applied "
        f"({tmp_path / 'routing' / 'destination-rule.yaml'})",
        f"Error [MB0103] VirtualService default/reviews spec.hosts[0]: reviews.default.svc.cluster.local is already "
        f"routed by VirtualService default/reviews-again; this VirtualService is not applied "
        f"({tmp_path / 'routing' / 'virtual-service.yml'})",
    ]


def test_warnings_alone_exit_zero_and_mesh_config_is_read(tmp_path: Path) -> None:
    write_bookinfo(tmp_path)
    (tmp_path / "reviews.yaml").write_text((tmp_path / "reviews.yaml").read_text().replace(
        "  selector:\n    app: reviews", "  clusterIP: 10.96.0.30\n  selector:\n    app: reviews"))
    mesh = tmp_path / "mesh.yaml"
    mesh.write_text("exclude_outbound_cidrs: [10.96.0.0/24]\n")
    result = run("-f", str(tmp_path / "reviews.yaml"), "-f", str(tmp_path / "routing"), "--mesh-config", str(mesh))
    assert result.returncode == 0
    assert result.stdout == ("Warning [MB0113] VirtualService default/reviews spec.hosts: the mesh config does not "
                             "capture 10.96.0.30:9080 (outbound include/exclude CIDRs and ports): these routes never "
                             f"apply there ({mesh})\n")
    mesh.write_text("ports: {admn: 1}\n")
    result = run("-f", str(tmp_path / "routing"), "--mesh-config", str(mesh))
    assert result.returncode == 1 and result.stdout.startswith("Error [MB0111] MeshConfig: ")
    assert "ports.admn: no such field in ProxyPorts" in result.stdout


def test_bad_input(tmp_path: Path) -> None:
    (tmp_path / "half.yaml").write_text("kind: VirtualService\nspec: [\n")
    result = run("-f", str(tmp_path))
    assert result.returncode == 1 and result.stdout.startswith(f"Error [MB0100] file: {tmp_path / 'half.yaml'}:")
    result = run("-f", str(tmp_path / "nope"))
    assert result.returncode == 1 and "nope: no such file or directory" in result.stderr


def test_seed_era_route_rules(tmp_path: Path) -> None:
    write_bookinfo(tmp_path)
    rules = tmp_path / "seed.yaml"
    rules.write_text("apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: ratings-default}\n"
                     "spec:\n  destination: {name: ratings}\n  route: [{labels: {version: v1}}]\n---\n"
                     "apiVersion: config.istio.io/v1alpha2\nkind: DestinationPolicy\nmetadata: {name: reviews-cb}\n"
                     "spec:\n  destination: {name: reviews}\n  circuitBreaker: {custom: {name: x}}\n")
    result = run("-f", str(tmp_path))
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"Error [MB0101] RouteRule default/ratings-default spec.destination: no Service or ServiceEntry has host "
        f"ratings.default.svc.cluster.local ({rules})",
        f"Error [MB0105] DestinationPolicy default/reviews-cb spec.circuitBreaker.custom: not implemented by meshbox "
        f"yet ({rules})",
    ]
