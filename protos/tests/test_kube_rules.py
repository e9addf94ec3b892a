"""Kubernetes' shared rules: selectors, target ports, readiness, EndpointSlices; atomic files; tools."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from meshbox.api.commands import CommandError, run_command
from meshbox.api.files import write_atomically
from meshbox.api.kube.endpoints import endpoint_slice, matches, port_endpoints, selects
from meshbox.api.kube.names import service_dns_names
from meshbox.api.kube.objects import ObjectError, Pod, Service, parse_pod, parse_service

SERVICE = {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
           "spec": {"clusterIP": "10.96.0.20", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "web-port"},
                              {"name": "admin", "port": 9000, "targetPort": 9001}]}}


def pod(name: str, ip: str, *, labels: dict[str, Any] | None = None, ready: bool | None = None,
        named: bool = True, namespace: str = "shop") -> Pod:
    status: dict[str, Any] = {"phase": "Running", "podIP": ip}
    if ready is not None:
        status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False"}]
    ports = [{"containerPort": 8080, **({"name": "web-port"} if named else {})}]
    return parse_pod({"kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                  "labels": labels or {"app": "web"}},
                      "spec": {"containers": [{"name": "c", "ports": ports}]}, "status": status}, source="t")


def service() -> Service:
    parsed = parse_service(SERVICE, source="t")
    assert parsed is not None
    return parsed


def test_selector_named_target_port_and_readiness() -> None:
    pods = [pod("a", "10.0.0.2", ready=True), pod("b", "10.0.0.3", ready=False), pod("c", "10.0.0.4", named=False),
            pod("other", "10.0.0.5", labels={"app": "db"}), pod("elsewhere", "10.0.0.6", namespace="prod")]
    svc = service()
    http = port_endpoints(svc, svc.ports[0], pods)
    # c has no port named web-port: no endpoint for that Service port, as kube-proxy does.
    assert [(e.pod_name, e.ip, e.port, e.ready) for e in http] == [("a", "10.0.0.2", 8080, True),
                                                                  ("b", "10.0.0.3", 8080, False)]
    admin = port_endpoints(svc, svc.ports[1], pods)
    assert [(e.pod_name, e.port) for e in admin] == [("a", 9001), ("b", 9001), ("c", 9001)]


def test_label_values_must_be_strings_as_the_api_server_says() -> None:
    with pytest.raises(ObjectError, match=r"metadata.labels.version: label values must be strings"):
        pod("a", "10.0.0.2", labels={"app": "web", "version": 1})


def test_empty_selector_selects_no_pods_but_matches_every_query() -> None:
    assert not selects({}, {"app": "web"}) and matches({}, {"app": "web"})
    assert selects({"app": "web"}, {"app": "web", "v": "1"}) and not selects({"app": "web"}, {"app": "Web"})


def test_endpoint_slice_lists_not_ready_endpoints_with_their_condition() -> None:
    slice_ = endpoint_slice(service(), [pod("a", "10.0.0.2", ready=True), pod("b", "10.0.0.3", ready=False)])
    assert slice_["metadata"]["labels"] == {"kubernetes.io/service-name": "web"}
    assert slice_["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"},
                               {"name": "admin", "port": 9001, "protocol": "TCP"}]
    assert [(e["addresses"], e["conditions"]["ready"], e["targetRef"]["name"]) for e in slice_["endpoints"]] == [
        (["10.0.0.2"], True, "a"), (["10.0.0.3"], False, "b")]


def test_service_errors_name_object_and_field_and_cluster_ip_may_be_allocated() -> None:
    bad = {**SERVICE, "spec": {**SERVICE["spec"], "ports": [{"port": 70000}]}}
    with pytest.raises(ObjectError) as info:
        parse_service(bad, source="in.yaml")
    assert str(info.value).startswith("in.yaml: Service shop/web: spec.ports[0].port: expected a port number")
    no_ip = {**SERVICE, "spec": {k: v for k, v in SERVICE["spec"].items() if k != "clusterIP"}}
    with pytest.raises(ObjectError, match=r"spec\.clusterIP: is required"):
        parse_service(no_ip, source="in.yaml")
    allocated = parse_service(no_ip, source="in.yaml", allocates_ip=True)
    assert allocated is not None and allocated.cluster_ip == ""


def test_service_dns_names() -> None:
    assert service_dns_names("a", "b") == ["a", "a.b", "a.b.svc", "a.b.svc.cluster.local"]


def test_write_atomically_keeps_mode_and_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old")
    target.chmod(0o600)
    write_atomically(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o600
    with pytest.raises(OSError):
        write_atomically(tmp_path / "missing-dir" / "f", b"x")
    assert sorted(os.listdir(tmp_path)) == ["f"]
    (tmp_path / "d").mkdir()
    write_atomically(tmp_path / "d" / "g", b"g", temp_dir=tmp_path)
    assert (tmp_path / "d" / "g").read_bytes() == b"g" and sorted(os.listdir(tmp_path)) == ["d", "f"]


def test_run_command_errors_name_the_command() -> None:
    assert run_command(["printf", "hi"]) == "hi"
    with pytest.raises(CommandError, match=r"^sh -c echo oops >&2; exit 3: exit 3: oops$"):
        run_command(["sh", "-c", "echo oops >&2; exit 3"])
    with pytest.raises(CommandError, match="not-a-tool-here: not installed"):
        run_command(["not-a-tool-here"])
    with pytest.raises(KeyError):
        run_command(["false"], error=KeyError)
