"""The local cluster's pure parts: manifests, addresses, NAT rules, hosts files."""

from __future__ import annotations

import pytest

from meshbox.cluster.addressing import (
    AddressError,
    check_cluster_ip,
    check_prefix,
    hosts_file,
    next_cluster_ip,
    next_pod_ip,
    service_chain,
)
from meshbox.cluster.images import ImageError, launch_for
from meshbox.cluster.netplan import ServicePort, node_rules
from meshbox.cluster.objects import (
    ManifestError,
    container_env,
    parse_label_selector,
    parse_manifests,
    pod_from_deployment,
)

SERVICE = """apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: web-port}
"""
DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: app
        image: gcr.io/google_containers/echoserver:1.4
        ports: [{name: web-port, containerPort: 8080}]
        env:
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: MODE, value: 3}
"""


def test_manifest_objects_and_namespace_default() -> None:
    resources = parse_manifests(SERVICE + "---\n" + DEPLOYMENT, "apps.yaml")
    assert [(r.kind, r.key) for r in resources] == [("Service", "default/web"), ("Deployment", "default/web")]


@pytest.mark.parametrize(("text", "message"), [
    ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "'ConfigMap' is not supported by the local cluster "
                                                              "(supported: Service, Deployment, Pod, RouteRule, "
                                                              "VirtualService, DestinationRule, ServiceEntry, "
                                                              "DestinationPolicy, PeerAuthentication, "
                                                              "AuthorizationPolicy)"),
    ("kind: Service\nmetadata: {name: x}\nspec: {ports: [{port: 70000}]}\n", "spec.ports[0].port: expected a port"),
    ("kind: Service\nmetadata: {name: Bad_Name}\nspec: {ports: [{port: 80}]}\n",
     "Service default/Bad_Name: metadata.name: Invalid value: 'Bad_Name'"),
    ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a}]}\n", "spec.containers[0].image: is required"),
    (DEPLOYMENT.replace("selector: {matchLabels: {app: web}}", "selector: {matchLabels: {app: other}}"),
     "spec.selector: does not match spec.template.metadata.labels"),
    ("kind: Service\nmetadata: {name: x\n", "invalid YAML"),
    ("", "no objects in the input"),
    (SERVICE + "---\n" + SERVICE, "service/web appears twice"),
    ("kind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: a, image: x, ports: [{containerPort: 80, name: web}],"
     " readinessProbe: {httpGet: {port: http}}}]}\n",
     "spec.containers[0].readinessProbe.httpGet.port: names no port of the container: 'http'"),
    # Named like the API server names them: the document, the object, the field.
    (DEPLOYMENT.replace("labels: {app: web}", "labels: {app: web, version: 1}"),
     "in.yaml (document 1): Deployment default/web: spec.template.metadata.labels.version: "
     "label values must be strings, got 1"),
    (DEPLOYMENT.replace("replicas: 2", "replicas: -1"), "Deployment default/web: spec.replicas: Invalid value: -1"),
    (DEPLOYMENT.replace("    spec:\n      containers:", "    spec:\n      restartPolicy: Sometimes\n      containers:"),
     "spec.template.spec.restartPolicy: unsupported value 'Sometimes'"),
    ("kind: Service\nmetadata: {name: h}\nspec: {clusterIP: None, ports: [{port: 80}]}\n",
     "Service default/h: spec.clusterIP: headless Services are not supported"),
    ("kind: Service\nmetadata: {name: s}\nspec: {selector: {app: [x]}, ports: [{port: 80}]}\n",
     "Service default/s: spec.selector.app: label values must be strings"),
])
def test_bad_manifests_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=None) as info:
        parse_manifests(text, "in.yaml")
    assert message in str(info.value)
    assert "in.yaml" in str(info.value)


def test_bad_route_rule_is_refused_with_its_field() -> None:
    rule = ("apiVersion: routing.meshbox.io/v1alpha1\nkind: RouteRule\nmetadata: {name: r}\n"
            "spec: {destination: web, route: [{labels: {version: v1}, weight: 30}]}\n")
    with pytest.raises(ManifestError, match="weight"):
        parse_manifests(rule, "rule.yaml")


ISTIO_ROUTING = """apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web}
spec:
  hosts: [web]
  http:
  - route: [{destination: {host: web, subset: v1}}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: web}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}]
"""


def test_istio_objects_are_taken_and_unimplemented_fields_refused() -> None:
    resources = parse_manifests(ISTIO_ROUTING, "istio.yaml")
    assert [(r.kind, r.key) for r in resources] == [("VirtualService", "default/web"),
                                                    ("DestinationRule", "default/web")]
    with pytest.raises(ManifestError) as info:
        parse_manifests(ISTIO_ROUTING.replace("  subsets:", "  trafficPolicy: {tunnel: {protocol: CONNECT}}\n"
                                                            "  subsets:"), "istio.yaml")
    assert str(info.value) == ("istio.yaml (document 2): DestinationRule default/web: spec.trafficPolicy."
                               "tunnel: not implemented by meshbox's proxy yet [MB0105]")
    with pytest.raises(ManifestError) as info:
        parse_manifests(ISTIO_ROUTING.replace("networking.istio.io/v1\n", "networking.istio.io/v2\n"), "istio.yaml")
    assert "apiVersion: 'networking.istio.io/v2' is not networking.istio.io/v1, " in str(info.value)


def test_seed_era_route_rules_are_taken() -> None:
    rule = ("apiVersion: config.istio.io/v1alpha2\nkind: RouteRule\nmetadata: {name: web-v1}\n"
            "spec: {destination: {name: web}, route: [{labels: {version: v1}}]}\n")
    assert [(r.kind, r.key) for r in parse_manifests(rule, "rule.yaml")] == [("RouteRule", "default/web-v1")]
    with pytest.raises(ManifestError) as info:
        parse_manifests(rule.replace("route:", "corsPolicy: {allowOrigin: ['*']}, route:"), "rule.yaml")
    assert str(info.value) == ("rule.yaml (document 1): RouteRule default/web-v1: spec.corsPolicy: not implemented "
                               "by meshbox's proxy yet [MB0105]")


def test_deployment_pods_and_env() -> None:
    _, deployment = (r.body for r in parse_manifests(SERVICE + "---\n" + DEPLOYMENT, "apps.yaml"))
    pod = pod_from_deployment(deployment, "web-abc")
    assert pod["metadata"]["labels"]["app"] == "web"
    assert pod["metadata"]["ownerReferences"] == [{"kind": "Deployment", "name": "web"}]
    env = container_env(pod["spec"]["containers"][0], pod, "10.244.0.9")
    assert env == {"POD_IP": "10.244.0.9", "MODE": "3"}


def test_env_from_unknown_field_is_an_error() -> None:
    container = {"name": "c", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}]}
    with pytest.raises(ManifestError, match="env X: only value and fieldRef"):
        container_env(container, {"metadata": {"name": "p", "namespace": "default"}, "spec": {}}, "1.2.3.4")


def test_images_map_to_programs_and_others_are_refused() -> None:
    echo = launch_for({"name": "app", "image": "gcr.io/google_containers/echoserver:1.4",
                       "ports": [{"containerPort": 9000}]}, init=False)
    assert echo.argv[-2:] == ["--port", "9000"] and echo.uid == 0
    init = launch_for({"name": "init", "image": "docker.io/meshbox/init:0.1.0", "args": ["-p", "15001"]}, init=True)
    assert init.argv[0].endswith("/meshbox-init") and init.argv[1:] == ["-p", "15001"]
    proxy = launch_for({"name": "proxy", "image": "docker.io/meshbox/proxy:0.1.0", "args": ["sidecar"],
                        "securityContext": {"runAsUser": 1337}}, init=False)
    assert proxy.argv[0].endswith("/meshbox-agent") and (proxy.uid, proxy.gid) == (1337, 1337)
    with pytest.raises(ImageError) as info:
        launch_for({"name": "db", "image": "redis:7"}, init=False)
    assert "'redis:7' is not supported" in str(info.value)
    assert "gcr.io/google_containers/echoserver:1.4" in str(info.value)


def test_addresses() -> None:
    assert next_pod_ip([]) == "10.244.0.2"
    assert next_pod_ip(["10.244.0.2", "10.244.0.4"]) == "10.244.0.3"
    # Round, not lowest-first: a just-freed address is not reused at once; the node's is never given.
    assert next_pod_ip(["10.244.0.3"], after="10.244.0.3") == "10.244.0.4"
    assert next_pod_ip([], after="10.244.255.254") == "10.244.0.2"
    assert next_cluster_ip([]) == "10.96.0.17"
    assert check_cluster_ip("10.96.5.5", []) == "10.96.5.5"
    for bad, why in (("10.0.0.1", "outside"), ("10.96.0.17", "already used"), ("x", "not an IPv4")):
        with pytest.raises(AddressError, match=why):
            check_cluster_ip(bad, ["10.96.0.17"])
    with pytest.raises(AddressError):
        check_prefix("Bad-Prefix")
    assert len(service_chain("default", "a-very-long-service-name-indeed", "http-status")) <= 28


def test_hosts_file_short_names_only_in_own_namespace() -> None:
    text = hosts_file("web-abc", "10.244.0.9", [("two", "default", "10.96.0.17"), ("db", "prod", "10.96.0.18")],
                      "default")
    assert "10.244.0.9\tweb-abc\n" in text
    assert "10.96.0.17\ttwo two.default two.default.svc two.default.svc.cluster.local\n" in text
    assert "10.96.0.18\tdb.prod db.prod.svc db.prod.svc.cluster.local\n" in text
    assert "10.244.0.1\tmeshbox-discovery.meshbox-system.svc " in text


def test_node_rules_spread_and_reject() -> None:
    port = ServicePort("default/web:http", "MBX-SVC-X", "10.96.0.17", 80,
                       (("10.244.0.2", 8080), ("10.244.0.3", 8080), ("10.244.0.4", 8080)))
    text = node_rules([port])
    dnat = [line for line in text.splitlines() if line.startswith("-A MBX-SVC-X")]
    assert "--probability 0.33333" in dnat[0] and "--probability 0.50000" in dnat[1]
    assert "statistic" not in dnat[2] and dnat[2].endswith("--to-destination 10.244.0.4:8080")
    assert "-A MBX-SERVICES -d 10.96.0.17/32 -p tcp --dport 80" in text
    assert "--reject-with tcp-reset" in text
    assert all('--comment "meshbox local:' in line for line in text.splitlines() if line.startswith("-A"))


def test_label_selector() -> None:
    assert parse_label_selector("app=a, version==v1") == {"app": "a", "version": "v1"}
    with pytest.raises(ManifestError, match="key=value"):
        parse_label_selector("app!=a")
