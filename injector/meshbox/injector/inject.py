"""The injection function: one Kubernetes object in, the injected object and a report out.

Pure: the input is never modified. Only the containers on the way to what changes are copied
(shallowly), so untouched parts of a manifest are shared, not deep-copied. Works on plain dicts
(a Pod from JSON, as the webhook has it) and on ruamel.yaml's round-trip maps alike.

`inject` adds an init container (last among init containers), a proxy container and a status
annotation recording exactly what was added; `uninject` removes exactly that. Injecting an
injected object again replaces the old sidecar, and returns the object itself when nothing changed.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from meshbox.api.kube import names
from meshbox.api.loader import plain_data
from meshbox.injector.annotations import (
    METRICS_PATH,
    OTHER_MESH_ANNOTATIONS,
    OTHER_MESH_CONTAINERS,
    PROMETHEUS_KEYS,
    PROMETHEUS_PATH,
    PROMETHEUS_PORT,
    PROMETHEUS_SCRAPE,
    STATUS,
    AnnotationError,
    opt_out,
    opts_in,
    traffic_overrides,
)
from meshbox.injector.settings import InjectSettings, SidecarTemplate
from meshbox.injector.sidecar import Sidecar, build_sidecar, quote_for_kubectl
from meshbox.injector.workloads import WORKLOAD_KINDS, pod_template_path

__all__ = [
    "SYSTEM_NAMESPACES",
    "InjectSettings",
    "Injection",
    "InjectionError",
    "Report",
    "SidecarTemplate",
    "inject",
    "uninject",
]

SYSTEM_NAMESPACES = frozenset(names.SYSTEM_NAMESPACES)
# Kinds whose pods are meant to finish, which a long-running sidecar prevents.
RUN_TO_COMPLETION = frozenset({"Job", "CronJob"})

INJECTED = "injected"
UPDATED = "updated"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
UNINJECTED = "uninjected"
WARNING = "warning"


@dataclass(frozen=True)
class Report:
    """What happened to one resource (or a warning about a document)."""

    kind: str
    name: str
    action: str
    reason: str = ""

    def line(self) -> str:
        """The stderr line: `deployment "web" injected`, `warning: ...`."""
        if self.action == WARNING:
            who = f'{self.kind.lower()} "{self.name}": ' if self.kind else ""
            return f"warning: {who}{self.reason}"
        base = f'{self.kind.lower()} "{self.name}" {self.action}'
        return f"{base}: {self.reason}" if self.reason else base


@dataclass
class Injection:
    """The result: the (possibly new) object and one report per resource."""

    obj: Any
    reports: list[Report] = field(default_factory=list)
    changed: bool = False


class InjectionError(ValueError):
    """A resource that cannot be injected; the message names it and the reason."""

    def __init__(self, kind: str, name: str, reason: str) -> None:
        self.kind = kind
        self.name = name
        self.reason = reason
        super().__init__(f'{kind.lower()} "{name}": {reason}')


@dataclass(frozen=True)
class _Resource:
    kind: str
    name: str
    namespace: str | None

    def error(self, reason: str) -> InjectionError:
        return InjectionError(self.kind, self.name, reason)

    def report(self, action: str, reason: str = "") -> Report:
        return Report(self.kind, self.name, action, reason)


_Handler = Callable[[Any, tuple[str, ...], _Resource, list[Report]], Any]


def inject(obj: Any, settings: InjectSettings, *, namespace: str | None = None) -> Injection:
    """Inject the sidecar into ``obj`` (any kind; non-workloads pass through).

    ``namespace`` is used when the object names none (the webhook knows it from the request).
    Raises InjectionError for a resource that must not be injected silently.
    """

    def handler(o: Any, path: tuple[str, ...], res: _Resource, reports: list[Report]) -> Any:
        return _inject_workload(o, path, res, reports, settings)

    return _run(obj, handler, namespace)


def uninject(obj: Any) -> Injection:
    """Remove exactly what ``inject`` added (found through the status annotation)."""
    return _run(obj, _uninject_workload, None)


def _run(obj: Any, handler: _Handler, namespace: str | None) -> Injection:
    reports: list[Report] = []
    out = _walk(obj, handler, namespace, reports)
    return Injection(obj=out, reports=reports, changed=out is not obj)


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    if isinstance(meta, Mapping):
        for key in ("name", "generateName"):
            if isinstance(meta.get(key), str) and meta[key]:
                return str(meta[key])
    return "<unnamed>"


def _walk(obj: Any, handler: _Handler, namespace: str | None, reports: list[Report]) -> Any:
    if obj is None:
        reports.append(Report("", "", WARNING, "empty document, passed through"))
        return obj
    if not isinstance(obj, Mapping):
        reports.append(Report("", "", WARNING, f"not a Kubernetes object ({type(obj).__name__}), passed through"))
        return obj
    kind = obj.get("kind")
    if not isinstance(kind, str) or not kind:
        reports.append(Report("", "", WARNING, "document without kind, passed through"))
        return obj
    name = _name(obj)
    if kind == "List":
        return _walk_list(obj, handler, namespace, reports)
    api_version = obj.get("apiVersion")
    path = pod_template_path(kind, api_version if isinstance(api_version, str) else "")
    if path is None:
        reason = f"{api_version} {kind} is not a Kubernetes workload" if kind in WORKLOAD_KINDS else ""
        reports.append(Report(kind, name, SKIPPED, reason))
        return obj
    meta = obj.get("metadata")
    ns = meta.get("namespace") if isinstance(meta, Mapping) else None
    return handler(obj, path, _Resource(kind, name, ns if isinstance(ns, str) and ns else namespace), reports)


def _walk_list(obj: Mapping[str, Any], handler: _Handler, namespace: str | None, reports: list[Report]) -> Any:
    items = obj.get("items")
    if items is None:
        return obj
    if not isinstance(items, list):
        raise InjectionError("List", _name(obj), "items: expected a list")
    new_items = None
    for i, item in enumerate(items):
        new = _walk(item, handler, namespace, reports)
        if new is not item:
            if new_items is None:
                new_items = copy.copy(items)
            new_items[i] = new
    if new_items is None:
        return obj
    out: Any = copy.copy(obj)
    out["items"] = new_items
    return out


# --- reading a pod template -------------------------------------------------------------------


def _template(obj: Mapping[str, Any], path: tuple[str, ...], res: _Resource) -> Mapping[str, Any]:
    node: Any = obj
    for i, key in enumerate(path):
        node = node.get(key) if isinstance(node, Mapping) else None
        if node is None:
            raise res.error(f"{'.'.join(path[: i + 1])} is missing (no pod template to inject)")
    if not isinstance(node, Mapping):
        raise res.error(f"{'.'.join(path)}: expected a mapping (the pod template)")
    return node


def _mapping_at(tpl: Mapping[str, Any], key: str, sub: str, res: _Resource) -> Mapping[str, Any]:
    parent = tpl.get(key)
    if parent is None:
        return {}
    if not isinstance(parent, Mapping):
        raise res.error(f"{key}: expected a mapping")
    value = parent.get(sub)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise res.error(f"{key}.{sub}: expected a mapping")
    return value


def _pod_spec(tpl: Mapping[str, Any], res: _Resource) -> Mapping[str, Any]:
    spec = tpl.get("spec")
    if not isinstance(spec, Mapping):
        raise res.error("pod spec is missing or not a mapping")
    for key in ("containers", "initContainers", "volumes"):
        value = spec.get(key)
        if key == "containers" and not isinstance(value, list):
            raise res.error("spec.containers: expected a list of containers")
        if value is not None and not isinstance(value, list):
            raise res.error(f"spec.{key}: expected a list")
        for i, item in enumerate(value or []):
            if not isinstance(item, Mapping):
                raise res.error(f"spec.{key}[{i}]: expected a mapping")
    return spec


def _names(spec: Mapping[str, Any], key: str) -> list[str]:
    return [str(item.get("name")) for item in spec.get(key) or []]


def _status(annotations: Mapping[str, Any], res: _Resource) -> dict[str, Any] | None:
    raw = annotations.get(STATUS)
    if raw is None:
        return None
    try:
        status = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        status = None
    ok = isinstance(status, dict) and all(
        isinstance(status.get(k, []), list) and all(isinstance(v, str) for v in status.get(k, []))
        for k in ("initContainers", "containers", "volumes", "created", "annotations")
    )
    if not ok:
        raise res.error(f"annotation {STATUS}: not a meshbox injection status: {raw!r}")
    assert isinstance(status, dict)
    return status


def _check_other_mesh(annotations: Mapping[str, Any], spec: Mapping[str, Any], res: _Resource) -> None:
    for key, mesh in OTHER_MESH_ANNOTATIONS.items():
        if key in annotations:
            raise res.error(f"already injected by {mesh} (annotation {key}); uninject it with {mesh}'s tools first")
    for key in ("initContainers", "containers"):
        for name in _names(spec, key):
            if name in OTHER_MESH_CONTAINERS:
                mesh = OTHER_MESH_CONTAINERS[name]
                raise res.error(f"already carries {mesh}'s sidecar (container {name!r}); a pod can have one mesh")


def _check_conflicts(spec: Mapping[str, Any], sidecar: Sidecar, res: _Resource) -> None:
    taken = set(_names(spec, "initContainers")) | set(_names(spec, "containers"))
    for part in (sidecar.init, sidecar.proxy):
        if part["name"] in taken:
            raise res.error(
                f"a container named {part['name']!r} already exists and the pod has no {STATUS} annotation: "
                "rename that container, or set another name in the sidecar template"
            )
    volumes = set(_names(spec, "volumes"))
    for volume in sidecar.volumes:
        if volume["name"] in volumes:
            raise res.error(f"a volume named {volume['name']!r} already exists (from the sidecar template)")


# --- changing a pod template (always on copies) -----------------------------------------------


def _cow_path(obj: Any, path: tuple[str, ...]) -> tuple[Any, MutableMapping[str, Any]]:
    """Copy ``obj`` and every container down ``path``; return the copy and its pod template."""
    root = copy.copy(obj)
    node = root
    for key in path:
        child = copy.copy(node[key])
        node[key] = child
        node = child
    return root, node


def _own(parent: MutableMapping[str, Any], key: str, empty: Callable[[], Any], created: list[str], label: str) -> Any:
    """A private copy of ``parent[key]``, created (and recorded in ``created``) when missing or null."""
    value = parent.get(key)
    if value is None:
        created.append(label if key not in parent else f"{label}:null")
        value = empty()
    else:
        value = copy.copy(value)
    parent[key] = value
    return value


def _scrape_annotations(annotations: Mapping[str, Any], status_port: int) -> dict[str, str]:
    """The prometheus.io/* annotations pointing at the agent's merged metrics; none when the pod already has
    one (its owner scrapes the app there, and meshbox does not merge app metrics into the agent's)."""
    if any(key in annotations for key in PROMETHEUS_KEYS):
        return {}
    values = {PROMETHEUS_SCRAPE: "true", PROMETHEUS_PORT: str(status_port), PROMETHEUS_PATH: METRICS_PATH}
    return {key: quote_for_kubectl(value) for key, value in values.items()}


def _add(tpl: MutableMapping[str, Any], sidecar: Sidecar, proxy_index: int | None, status_port: int) -> None:
    created: list[str] = []
    spec = _own(tpl, "spec", dict, created, "spec")
    _own(spec, "initContainers", list, created, "spec.initContainers").append(sidecar.init)
    containers = _own(spec, "containers", list, created, "spec.containers")
    if proxy_index is None or proxy_index >= len(containers):
        containers.append(sidecar.proxy)
    else:
        containers.insert(proxy_index, sidecar.proxy)
    if sidecar.volumes:
        _own(spec, "volumes", list, created, "spec.volumes").extend(sidecar.volumes)
    meta = _own(tpl, "metadata", dict, created, "metadata")
    annotations = _own(meta, "annotations", dict, created, "metadata.annotations")
    scrape = _scrape_annotations(annotations, status_port)
    annotations.update(scrape)
    status = {
        "initContainers": [sidecar.init["name"]],
        "containers": [sidecar.proxy["name"]],
        "volumes": [v["name"] for v in sidecar.volumes],
        "created": created,
    }
    if scrape:
        status["annotations"] = list(scrape)
    annotations[STATUS] = json.dumps(status, separators=(",", ":"))


def _drop_named(parent: MutableMapping[str, Any], key: str, names: list[str]) -> int | None:
    """Remove the items named ``names`` from ``parent[key]``; return the first removed index."""
    items = parent.get(key)
    if not isinstance(items, list) or not names:
        return None
    doomed = [i for i, item in enumerate(items) if isinstance(item, Mapping) and item.get("name") in names]
    if not doomed:
        return None
    kept = copy.copy(items)
    for i in reversed(doomed):
        del kept[i]
    parent[key] = kept
    return doomed[0]


def _restore_created(parent: MutableMapping[str, Any], key: str, label: str, created: list[str]) -> None:
    """Undo a key injection created, if nothing else lives in it now."""
    if key in parent and not parent[key]:
        if label in created:
            del parent[key]
        elif f"{label}:null" in created:
            parent[key] = None


def _remove(tpl: MutableMapping[str, Any], status: Mapping[str, Any]) -> int | None:
    """Remove what ``status`` says was added; return where the proxy container was."""
    created = list(status.get("created", []))
    spec = tpl["spec"] = copy.copy(tpl["spec"])
    _drop_named(spec, "initContainers", list(status.get("initContainers", [])))
    proxy_index = _drop_named(spec, "containers", list(status.get("containers", [])))
    _drop_named(spec, "volumes", list(status.get("volumes", [])))
    for key in ("initContainers", "volumes"):
        _restore_created(spec, key, f"spec.{key}", created)
    meta = tpl["metadata"] = copy.copy(tpl["metadata"])
    annotations = meta["annotations"] = copy.copy(meta["annotations"])
    del annotations[STATUS]
    for key in status.get("annotations", []):
        annotations.pop(key, None)
    _restore_created(meta, "annotations", "metadata.annotations", created)
    _restore_created(tpl, "metadata", "metadata", created)
    return proxy_index


# --- the two handlers -------------------------------------------------------------------------


def _opt_out_reason(obj: Any, path: tuple[str, ...], template_annotations: Mapping[str, Any],
                    res: _Resource) -> str | None:
    """Why the workload is skipped, naming where the opt-out was found, or None.

    The pod template is read first (meshbox's own "true" there wins), then the workload's own
    metadata, as Istio's kube-inject honoured both.
    """
    if not path:
        return opt_out(template_annotations, "on the pod's metadata")
    reason = opt_out(template_annotations, f"on the pod template ({'.'.join(path)}.metadata.annotations)")
    if reason or opts_in(template_annotations):
        return reason
    return opt_out(_mapping_at(obj, "metadata", "annotations", res),
                   f"on the {res.kind}'s own metadata (metadata.annotations)")


def _inject_workload(
    obj: Any, path: tuple[str, ...], res: _Resource, reports: list[Report], settings: InjectSettings
) -> Any:
    tpl = _template(obj, path, res)
    annotations = _mapping_at(tpl, "metadata", "annotations", res)
    if res.namespace in SYSTEM_NAMESPACES:
        reports.append(res.report(SKIPPED, f"namespace {res.namespace} is never injected"))
        return obj
    try:
        reason = _opt_out_reason(obj, path, annotations, res)
        overrides, warnings = traffic_overrides(annotations)
    except AnnotationError as exc:
        raise res.error(str(exc)) from None
    if reason:
        reports.append(res.report(SKIPPED, reason))
        return obj
    spec = _pod_spec(tpl, res)
    if spec.get("hostNetwork") is True:
        reports.append(res.report(SKIPPED, "hostNetwork pod (its sidecar would capture the node's traffic)"))
        return obj
    _check_other_mesh(annotations, spec, res)
    status = _status(annotations, res)
    sidecar = build_sidecar(settings, overrides)
    new_obj, new_tpl = _cow_path(obj, path)
    proxy_index = _remove(new_tpl, status) if status is not None else None
    _check_conflicts(new_tpl["spec"], sidecar, res)
    _add(new_tpl, sidecar, proxy_index, settings.status_port)
    reports.extend(res.report(WARNING, w) for w in warnings)
    if res.kind in RUN_TO_COMPLETION:
        reports.append(res.report(WARNING, (
            f"the proxy keeps running after the job's containers exit: make the last step "
            f"POST http://127.0.0.1:{settings.status_port}/quitquitquit (see docs/injector.md)"
        )))
    if status is None:
        reports.append(res.report(INJECTED))
        return new_obj
    if plain_data(new_obj) == plain_data(obj):
        reports.append(res.report(UNCHANGED, "already injected with these settings"))
        return obj
    reports.append(res.report(UPDATED, "sidecar replaced with the current settings"))
    return new_obj


def _uninject_workload(obj: Any, path: tuple[str, ...], res: _Resource, reports: list[Report]) -> Any:
    tpl = _template(obj, path, res)
    status = _status(_mapping_at(tpl, "metadata", "annotations", res), res)
    if status is None:
        reports.append(res.report(SKIPPED, "not injected by meshbox"))
        return obj
    _pod_spec(tpl, res)
    new_obj, new_tpl = _cow_path(obj, path)
    _remove(new_tpl, status)
    reports.append(res.report(UNINJECTED))
    return new_obj
