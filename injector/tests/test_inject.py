"""The pure injection function on plain dicts (the webhook's Pods) and on ruamel round-trip maps."""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import pytest
from ruamel.yaml import YAML

from meshbox.api.loader import parse_mesh_config
from meshbox.injector.annotations import STATUS
from meshbox.injector.inject import InjectionError, InjectSettings, inject, uninject
from meshbox.injector.settings import SidecarTemplate


def pod(**spec_extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "labels": {"app": "p"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec_extra},
    }


def with_annotations(obj: dict[str, Any], **annotations: Any) -> dict[str, Any]:
    obj["metadata"]["annotations"] = dict(annotations)
    return obj


SETTINGS = InjectSettings()


def test_plain_dict_in_injected_dict_out_and_input_untouched() -> None:
    original = pod()
    before = copy.deepcopy(original)
    result = inject(original, SETTINGS)
    assert original == before, "inject must not modify its input"
    assert result.changed
    spec = result.obj["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "proxy"]
    assert [c["name"] for c in spec["initContainers"]] == ["init"]
    init = spec["initContainers"][0]
    assert init["args"] == ["-p", "15001", "-u", "1337"]
    assert init["image"] == "docker.io/meshbox/init:0.1.0"
    assert init["securityContext"]["capabilities"] == {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
    assert init["securityContext"]["privileged"] is False
    proxy = spec["containers"][1]
    assert proxy["args"] == ["sidecar", "--discovery-address", "meshbox-discovery.meshbox-system.svc:15010"]
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert proxy["securityContext"]["runAsNonRoot"] is True
    assert proxy["securityContext"]["allowPrivilegeEscalation"] is False
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/healthz/ready", "port": 15020}
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in proxy["env"]}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "POD_IP": "status.podIP",
                   "SERVICE_ACCOUNT": "spec.serviceAccountName"}
    annotations = result.obj["metadata"]["annotations"]
    assert {k: v for k, v in annotations.items() if k.startswith("prometheus.io/")} == {
        "prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/stats/prometheus"}
    status = json.loads(annotations[STATUS])
    assert status == {"initContainers": ["init"], "containers": ["proxy"],
                      "volumes": ["meshbox-ca-root", "meshbox-token", "meshbox-certs"],
                      "created": ["spec.initContainers", "spec.volumes", "metadata.annotations"],
                      "annotations": ["prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path"]}
    # The workload certificate's inputs and output (docs/security.md).
    assert {m["name"]: m["mountPath"] for m in proxy["volumeMounts"]} == {
        "meshbox-ca-root": "/var/run/meshbox/ca-root", "meshbox-token": "/var/run/secrets/tokens",
        "meshbox-certs": "/var/run/meshbox/certs"}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["meshbox-ca-root"]["configMap"] == {"name": "meshbox-ca-root"}
    assert volumes["meshbox-token"]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "meshbox-ca"
    # The output is JSON-serialisable as the webhook needs it.
    json.dumps(result.obj)
    assert [r.line() for r in result.reports] == ['pod "p" injected']


def test_untouched_parts_are_shared_not_copied() -> None:
    original = pod(volumes=[{"name": "data", "emptyDir": {}}])
    result = inject(original, SETTINGS)
    assert result.obj is not original
    assert result.obj["spec"]["containers"][0] is original["spec"]["containers"][0]
    assert result.obj["spec"]["volumes"][0] is original["spec"]["volumes"][0]
    assert original["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]
    assert result.obj["metadata"]["labels"] is original["metadata"]["labels"]


def test_uninject_restores_the_plain_object_exactly() -> None:
    original = pod()
    injected = inject(original, SETTINGS).obj
    assert uninject(injected).obj == original
    keyed = with_annotations(pod(initContainers=[{"name": "setup", "image": "s"}]), team="a")
    injected = inject(keyed, SETTINGS).obj
    assert [c["name"] for c in injected["spec"]["initContainers"]] == ["setup", "init"], "init must go last"
    assert uninject(injected).obj == keyed


def test_null_annotations_come_back_as_null() -> None:
    original = pod()
    original["metadata"]["annotations"] = None
    injected = inject(original, SETTINGS).obj
    assert uninject(injected).obj == original


def test_template_without_metadata_gets_it_and_loses_it_again() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "a", "image": "a"}]}}}}
    injected = inject(job, SETTINGS).obj
    assert STATUS in injected["spec"]["template"]["metadata"]["annotations"]
    assert uninject(injected).obj == job


def test_ruamel_round_trip_maps_work_too() -> None:
    yaml = YAML()
    doc = yaml.load("kind: Pod\napiVersion: v1\nmetadata:\n  name: p  # the pod\nspec:\n  containers:\n  - name: a\n"
                    "    image: a\n")
    before = io.StringIO()
    yaml.dump(doc, before)
    result = inject(doc, SETTINGS)
    after = io.StringIO()
    yaml.dump(doc, after)
    assert after.getvalue() == before.getvalue(), "the input document must be unchanged"
    out = io.StringIO()
    yaml.dump(result.obj, out)
    assert "name: p  # the pod" in out.getvalue()
    assert "- name: proxy" in out.getvalue()


def test_injecting_again_returns_the_same_object() -> None:
    injected = inject(pod(), SETTINGS).obj
    again = inject(injected, SETTINGS)
    assert again.obj is injected
    assert not again.changed
    assert again.reports[0].action == "unchanged"


def test_new_settings_replace_the_old_sidecar_in_place() -> None:
    original = pod()
    injected = inject(original, InjectSettings(hub="old.example.com", tag="0.0.1")).obj
    # A container the user added after injection stays where it is, after the proxy.
    injected["spec"]["containers"].append({"name": "late", "image": "l"})
    updated = inject(injected, SETTINGS)
    assert updated.reports[0].action == "updated"
    names = [c["name"] for c in updated.obj["spec"]["containers"]]
    assert names == ["app", "proxy", "late"]
    assert updated.obj["spec"]["containers"][1]["image"] == "docker.io/meshbox/proxy:0.1.0"
    assert [c["name"] for c in updated.obj["spec"]["initContainers"]] == ["init"]


def test_renamed_sidecar_replaces_the_old_names() -> None:
    injected = inject(pod(), SETTINGS).obj
    renamed = InjectSettings(template=SidecarTemplate(proxy={"name": "mesh-proxy"}))
    updated = inject(injected, renamed).obj
    assert [c["name"] for c in updated["spec"]["containers"]] == ["app", "mesh-proxy"]


def test_namespace_from_the_caller_when_the_object_has_none() -> None:
    result = inject(pod(), SETTINGS, namespace="kube-system")
    assert not result.changed
    assert "kube-system" in result.reports[0].reason
    assert inject(pod(), SETTINGS, namespace="default").changed


def test_object_namespace_wins_over_the_callers() -> None:
    obj = pod()
    obj["metadata"]["namespace"] = "kube-system"
    assert not inject(obj, SETTINGS, namespace="default").changed


def test_list_items_are_injected_one_by_one() -> None:
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}
    lst = {"apiVersion": "v1", "kind": "List", "items": [svc, pod()]}
    result = inject(lst, SETTINGS)
    assert result.obj["items"][0] is svc
    assert [r.line() for r in result.reports] == ['service "s" skipped', 'pod "p" injected']
    assert uninject(result.obj).obj == lst


@pytest.mark.parametrize("annotations", [
    {"sidecar.meshbox.io/inject": "false"},
    {"sidecar.meshbox.io/inject": "no"},
    {"sidecar.istio.io/inject": "false"},
    {"linkerd.io/inject": "disabled"},
])
def test_opt_outs(annotations: dict[str, str]) -> None:
    result = inject(with_annotations(pod(), **annotations), SETTINGS)
    assert not result.changed
    assert result.reports[0].action == "skipped"


def test_host_network_is_skipped() -> None:
    result = inject(pod(hostNetwork=True), SETTINGS)
    assert not result.changed
    assert "hostNetwork" in result.reports[0].reason


def errors(obj: Any) -> str:
    with pytest.raises(InjectionError) as info:
        inject(obj, SETTINGS)
    return str(info.value)


def test_a_container_named_like_the_sidecar_is_a_conflict() -> None:
    obj = pod()
    obj["spec"]["containers"].append({"name": "proxy", "image": "my-own-proxy"})
    message = errors(obj)
    assert message.startswith('pod "p": ')
    assert "'proxy' already exists" in message and STATUS in message
    obj = pod(initContainers=[{"name": "init", "image": "mine"}])
    assert "'init' already exists" in errors(obj)


@pytest.mark.parametrize(("where", "name", "mesh"), [
    ("containers", "istio-proxy", "Istio"),
    ("initContainers", "istio-init", "Istio"),
    ("containers", "linkerd-proxy", "Linkerd"),
])
def test_another_mesh_sidecar_is_an_error(where: str, name: str, mesh: str) -> None:
    obj = pod()
    obj["spec"].setdefault(where, []).append({"name": name, "image": "x"})
    message = errors(obj)
    assert mesh in message and name in message


def test_another_mesh_status_annotation_is_an_error() -> None:
    assert "Istio" in errors(with_annotations(pod(), **{"sidecar.istio.io/status": "{}"}))


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("traffic.sidecar.meshbox.io/excludeOutboundIPRanges", "10.0.0.0/33", "not a CIDR: '10.0.0.0/33'"),
    ("traffic.sidecar.istio.io/includeOutboundIPRanges", "10.0.0.0/8,banana", "not a CIDR: 'banana'"),
    ("traffic.sidecar.meshbox.io/excludeInboundPorts", "8080,70000", "not a port (1..65535): '70000'"),
    ("traffic.sidecar.istio.io/excludeOutboundPorts", "*", "'*' is not allowed here"),
    ("traffic.sidecar.meshbox.io/excludeOutboundIPRanges", "*", "'*' is not allowed here"),
    ("traffic.sidecar.meshbox.io/includeOutboundIPRanges", "*,10.0.0.0/8", "'*' cannot be combined"),
    ("sidecar.meshbox.io/inject", "maybe", 'expected "true" or "false"'),
    ("sidecar.meshbox.io/inject", False, "must be strings"),
])
def test_bad_annotation_values_name_resource_annotation_and_value(key: str, value: Any, expected: str) -> None:
    message = errors(with_annotations(pod(), **{key: value}))
    assert message.startswith('pod "p": ')
    assert key in message and repr(value) in message and expected in message


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda o: o["spec"].pop("containers"), "spec.containers: expected a list"),
    (lambda o: o["spec"].update(initContainers={"name": "x"}), "spec.initContainers: expected a list"),
    (lambda o: o["spec"]["containers"].append("text"), "spec.containers[1]: expected a mapping"),
    (lambda o: o.pop("spec"), "pod spec is missing"),
    (lambda o: o["metadata"].update(annotations=["a"]), "metadata.annotations: expected a mapping"),
    (lambda o: o["metadata"].update(annotations={STATUS: "not json"}), "not a meshbox injection status"),
])
def test_malformed_workloads_are_errors(mutate: Any, expected: str) -> None:
    obj = pod()
    mutate(obj)
    assert expected in errors(obj)


def test_workload_without_a_pod_template_is_an_error() -> None:
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1}}
    assert errors(dep) == 'deployment "d": spec.template is missing (no pod template to inject)'
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"}, "spec": {"jobTemplate": {}}}
    assert "spec.jobTemplate.spec is missing" in errors(cron)


def test_uninject_of_an_uninjected_object_is_the_object() -> None:
    obj = pod()
    result = uninject(obj)
    assert result.obj is obj
    assert result.reports[0].line() == 'pod "p" skipped: not injected by meshbox'


def test_documents_that_are_not_objects_pass_through_with_a_warning() -> None:
    for doc in (None, {"metadata": {"name": "x"}}, ["a"], "text"):
        result = inject(doc, SETTINGS)
        assert result.obj is doc
        assert result.reports[0].line().startswith("warning: ")


def test_a_pod_that_declares_its_own_scrape_keeps_it_and_uninject_restores_exactly() -> None:
    original = pod()
    original["metadata"]["annotations"] = {"prometheus.io/scrape": "true", "prometheus.io/port": "9090"}
    injected = inject(original, SETTINGS).obj
    annotations = injected["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090" and "prometheus.io/path" not in annotations
    assert "annotations" not in json.loads(annotations[STATUS])
    assert uninject(injected).obj == original
    plain = inject(pod(), SETTINGS).obj
    assert uninject(plain).obj == pod()


def test_the_mesh_configs_tracing_reaches_the_agent_as_flags() -> None:
    mesh = parse_mesh_config("tracing:\n  collector_address: otel.obs.svc:4317\n  sampling_percentage: 12.5\n")
    proxy = inject(pod(), InjectSettings.from_mesh_config(mesh)).obj["spec"]["containers"][1]
    assert proxy["args"][:7] == ["sidecar", "--discovery-address", "meshbox-discovery.meshbox-system.svc:15010",
                                 "--trace-collector", "otel.obs.svc:4317", "--trace-sampling", "12.5"]
    untraced = inject(pod(), InjectSettings.from_mesh_config(parse_mesh_config(""))).obj["spec"]["containers"][1]
    assert "--trace-collector" not in untraced["args"]
