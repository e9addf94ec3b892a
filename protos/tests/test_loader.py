"""The shared config model as users write it: YAML → messages, with errors naming the bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import json_format

from meshbox.api.defaults import default_mesh_config, inbound_capture_port
from meshbox.api.loader import (
    ConfigError,
    load_mesh_config,
    load_proxy_config,
    parse_mesh_config,
    parse_proxy_config,
    parse_route_rule,
)
from meshbox.api.v1 import mesh_config_pb2, proxy_config_pb2
from meshbox.api.validation import ValidationError

PROXY_YAML = """\
listeners:
- name: service-two_80
  direction: OUTBOUND
  address: 10.96.0.20
  port: 80
  protocol: HTTP
  route_config: service-two
route_configs:
- name: service-two
  virtual_hosts:
  - name: service-two
    domains: [service-two, "service-two:80"]
    routes:
    - match: {prefix: /}
      clusters: [{cluster: "outbound|80||service-two.default.svc.cluster.local", weight: 100}]
      timeout: 2.5s
      retries: {attempts: 2}
clusters:
- name: "outbound|80||service-two.default.svc.cluster.local"
  lbPolicy: LEAST_REQUEST
  connectTimeout: 0.25s
endpoints:
- cluster_name: "outbound|80||service-two.default.svc.cluster.local"
  endpoints:
  - {address: 10.244.0.7, port: 8080, labels: {version: v1}}
"""


def test_defaults_match_the_tutorial() -> None:
    config = load_mesh_config(None)
    assert config.ports.outbound_capture == 15001
    assert config.ports.admin == 15000
    assert config.proxy_uid == 1337 and config.proxy_gid == 1337
    # Single-port mode, as in the tutorial's `-p 15001 -u 1337`.
    assert config.ports.inbound_capture == 0
    assert inbound_capture_port(config) == 15001


def test_mesh_config_yaml_overrides_only_what_it_sets(tmp_path: Path) -> None:
    path = tmp_path / "mesh.yaml"
    path.write_text(
        "ports:\n  inboundCapture: 15006\nhub: registry.example.org:5000/team/mesh\n"
        "exclude_outbound_cidrs: [10.0.0.0/8]\n"
    )
    config = load_mesh_config(path)
    assert inbound_capture_port(config) == 15006
    assert config.ports.outbound_capture == 15001
    assert config.hub == "registry.example.org:5000/team/mesh"
    assert config.tag == default_mesh_config().tag
    assert list(config.exclude_outbound_cidrs) == ["10.0.0.0/8"]
    assert config.outbound_traffic_policy == mesh_config_pb2.ALLOW_ANY


def test_proxy_config_round_trips_through_yaml_and_binary() -> None:
    config = parse_proxy_config(PROXY_YAML, source="proxy.yaml")
    assert config.listeners[0].protocol == proxy_config_pb2.HTTP
    route = config.route_configs[0].virtual_hosts[0].routes[0]
    assert route.timeout.ToMilliseconds() == 2500
    assert route.retries.attempts == 2
    assert config.clusters[0].lb_policy == proxy_config_pb2.LEAST_REQUEST
    assert config.endpoints[0].endpoints[0].labels["version"] == "v1"
    # Binary (what the agent sends the proxy) and JSON (config_dump) give the same message back.
    again = proxy_config_pb2.ProxyConfig.FromString(config.SerializeToString())
    assert again == config
    assert json_format.ParseDict(json_format.MessageToDict(config), proxy_config_pb2.ProxyConfig()) == config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ports:\n  admn: 1\n", "mesh.yaml:2:3: ports.admn: no such field in ProxyPorts"),
        ("ports:\n  admin: abc\n", "mesh.yaml:2:3: ports.admin: expected an integer, got a string 'abc'"),
        ("proxy_uid: -5\n", "mesh.yaml:1:1: proxy_uid: must not be negative, got -5"),
        ("log_level: LOUD\n", "mesh.yaml:1:1: log_level: expected one of LOG_LEVEL_UNSPECIFIED, DEBUG"),
        ("hub: 5\n", "mesh.yaml:1:1: hub: expected a string, got an integer 5"),
        ("exclude_outbound_cidrs: 10.0.0.0/8\n", "mesh.yaml:1:1: exclude_outbound_cidrs: expected a list"),
        ("ports: [1, 2]\n", "mesh.yaml:1:1: ports: expected a mapping (ProxyPorts), got a list"),
        ("ports:\n  admin: [1, 2\nhub: x\n", "mesh.yaml:3:4: invalid YAML"),
        ("a: 1\na: 2\n", "mesh.yaml:2:1: invalid YAML"),
    ],
)
def test_bad_fields_are_named_with_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_mesh_config(text, source="mesh.yaml")
    assert str(err.value).startswith(expected), str(err.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ports: {admin: 70000}\n", "mesh.yaml: ports.admin: port must be 1..65535, got 70000"),
        ("exclude_outbound_cidrs: ['*']\n", "mesh.yaml: exclude_outbound_cidrs[0]: '*' is not allowed here"),
        ("include_outbound_cidrs: [10.0.0.0/33]\n", "mesh.yaml: include_outbound_cidrs[0]: not a CIDR"),
        ("ports: {admin: 15001}\n", "mesh.yaml: ports.admin: port 15001 is also outbound_capture"),
        ("hub: 'bad hub'\n", "mesh.yaml: hub: not an image registry/repository prefix: 'bad hub'"),
        ("tag: '-x'\n", "mesh.yaml: tag: not an image tag: '-x'"),
    ],
)
def test_meaningless_values_are_refused(text: str, expected: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_mesh_config(text, source="mesh.yaml")
    assert str(err.value).startswith(expected), str(err.value)


def test_proxy_config_with_dangling_reference_is_refused() -> None:
    broken = PROXY_YAML.replace("route_config: service-two", "route_config: nowhere")
    with pytest.raises(ValidationError, match=r"listeners\[0\]\.route_config: unknown route config 'nowhere'"):
        parse_proxy_config(broken, source="proxy.yaml")


def test_bad_duration_is_named() -> None:
    with pytest.raises(ConfigError, match=r"proxy\.yaml"):
        parse_proxy_config(PROXY_YAML.replace("timeout: 2.5s", "timeout: soon"), source="proxy.yaml")


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_proxy_config(tmp_path / "absent.yaml")


def test_route_rule_document() -> None:
    doc = {
        "apiVersion": "routing.meshbox.io/v1alpha1",
        "kind": "RouteRule",
        "metadata": {"name": "split"},
        "spec": {
            "destination": "service-two",
            "route": [{"labels": {"version": "v1"}, "weight": 90}, {"labels": {"version": "v2"}, "weight": 10}],
            "fault": {"abort": {"percent": 5, "httpStatus": 503}},
        },
    }
    name, namespace, spec = parse_route_rule(doc, source="rule.yaml")
    assert (name, namespace) == ("split", "default")
    assert [d.weight for d in spec.route] == [90, 10]
    doc["spec"]["port"] = 70000  # type: ignore[index]
    with pytest.raises(ValidationError, match=r"spec\.port: port must be 1\.\.65535, got 70000"):
        parse_route_rule(doc, source="rule.yaml")
    doc["spec"]["port"] = 80  # type: ignore[index]
    assert parse_route_rule(doc, source="rule.yaml")[2].port == 80
    doc["spec"]["route"][1]["weight"] = 20  # type: ignore[index]
    with pytest.raises(ValidationError, match=r"spec\.route: route weights must add up to 100, got 110"):
        parse_route_rule(doc, source="rule.yaml")
    doc["spec"]["routes"] = doc["spec"].pop("route")  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"spec\.routes: no such field in RouteRuleSpec"):
        parse_route_rule(doc, source="rule.yaml")
