"""The local cluster's state as types: the cluster, its pods and containers, Services, Deployments (pure).

state.json holds exactly these, as JSON; ``ClusterState.from_json`` also reads the first
format (pods without restart counts or readiness), so a cluster made by an older meshctl can
still be listed and taken down. Object bodies (a Service's or Deployment's manifest) stay the
plain mappings the user applied: they are Kubernetes objects, printed back as they came.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshbox.api.kube.objects import Pod, Service, parse_pod, parse_service
from meshbox.cluster.addressing import NODE_IP
from meshbox.cluster.host import ProcessRef
from meshbox.cluster.objects import Obj

FORMAT = 2
READABLE_FORMATS = (1, 2)


def _ref(data: Mapping[str, Any] | None) -> ProcessRef | None:
    return ProcessRef.from_json(data) if data else None


@dataclass
class ContainerState:
    """One running (or restarting) container: its process, user, restarts and last readiness."""

    pid: int
    start: int
    uid: int
    restarts: int = 0
    ready: bool = False
    started_at: float = 0.0  # wall-clock start, to reset the back-off of a container that ran long enough
    exited_at: float | None = None  # when the kubelet saw it exit (None while it runs)
    backoff: float = 0.0  # seconds to wait after an exit before the next restart

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start)

    def to_json(self) -> Obj:
        return {"pid": self.pid, "start": self.start, "uid": self.uid, "restarts": self.restarts,
                "ready": self.ready, "started_at": self.started_at, "exited_at": self.exited_at,
                "backoff": self.backoff}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ContainerState:
        return cls(int(data["pid"]), int(data["start"]), int(data["uid"]), int(data.get("restarts", 0)),
                   bool(data.get("ready", False)), float(data.get("started_at", 0.0)), data.get("exited_at"),
                   float(data.get("backoff", 0.0)))


@dataclass
class ObjectRecord:
    """A Kubernetes object as the cluster keeps it: its manifest, with names read from its metadata."""

    body: Obj

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.body["metadata"].get("labels") or {})

    @property
    def created(self) -> str | None:
        return self.body["metadata"].get("creationTimestamp")


@dataclass
class PodRecord(ObjectRecord):
    """A pod: its manifest, address, network namespace, pause process and containers."""

    ip: str
    netns: str
    veth: int
    pause: ProcessRef | None = None
    containers: dict[str, ContainerState] = field(default_factory=dict)
    init: dict[str, int] = field(default_factory=dict)  # init container → exit code
    phase: str = "Pending"  # Pending, Running, Init:Error, Failed
    ready: bool = False  # every container ready, as the kubelet last saw it

    @property
    def spec(self) -> Obj:
        return self.body["spec"]

    @property
    def owner(self) -> str | None:
        """The Deployment that owns this pod, if any."""
        for ref in self.body["metadata"].get("ownerReferences") or []:
            if ref.get("kind") == "Deployment":
                return str(ref.get("name"))
        return None

    @property
    def restarts(self) -> int:
        return sum(c.restarts for c in self.containers.values())

    def status(self) -> Obj:
        """The pod's ``status`` as the API server reports it (phase, IPs, the Ready condition)."""
        running = self.phase == "Running"
        return {
            "phase": self.phase if self.phase in ("Pending", "Running") else "Failed",
            "podIP": self.ip, "hostIP": str(NODE_IP),
            "conditions": [{"type": "Ready", "status": "True" if running and self.ready else "False"}],
            "containerStatuses": [
                {"name": c["name"], "image": c["image"],
                 "ready": bool(running and c["name"] in self.containers and self.containers[c["name"]].ready),
                 "restartCount": self.containers[c["name"]].restarts if c["name"] in self.containers else 0}
                for c in self.spec["containers"]],
        }

    def as_pod(self) -> Pod:
        """The pod as meshbox.api.kube reads it (serving = running and ready)."""
        return parse_pod({**self.body, "status": self.status()}, source="state.json")

    def to_json(self) -> Obj:
        return {"body": self.body, "ip": self.ip, "netns": self.netns, "veth": self.veth,
                "pause": self.pause.to_json() if self.pause else None,
                "containers": {n: c.to_json() for n, c in self.containers.items()},
                "init": {n: {"exit": code} for n, code in self.init.items()}, "phase": self.phase,
                "ready": self.ready}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PodRecord:
        return cls(dict(data["body"]), str(data["ip"]), str(data["netns"]), int(data.get("veth", 0)),
                   _ref(data.get("pause")),
                   {n: ContainerState.from_json(c) for n, c in (data.get("containers") or {}).items()},
                   {n: int(i["exit"]) for n, i in (data.get("init") or {}).items()}, str(data.get("phase", "Pending")),
                   bool(data.get("ready", False)))


@dataclass
class ServiceRecord(ObjectRecord):
    """A Service as applied, with the ClusterIP the cluster gave it."""

    @property
    def cluster_ip(self) -> str:
        return str(self.body["spec"]["clusterIP"])

    def as_service(self) -> Service:
        """The Service as meshbox.api.kube reads it (checked when applied, so never None here)."""
        service = parse_service(self.body, source="state.json")
        assert service is not None, "headless Services are refused when applied"
        return service


@dataclass
class DeploymentRecord(ObjectRecord):
    """A Deployment as applied."""

    @property
    def replicas(self) -> int:
        return int(self.body["spec"].get("replicas", 1))


@dataclass
class ClusterState:
    """Everything state.json records about one cluster."""

    prefix: str
    ledger: list[Obj] = field(default_factory=list)
    next_veth: int = 1
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    deployments: dict[str, DeploymentRecord] = field(default_factory=dict)
    pods: dict[str, PodRecord] = field(default_factory=dict)
    rules: dict[str, Obj] = field(default_factory=dict)
    discovery: ProcessRef | None = None
    kubelet: ProcessRef | None = None
    endpoints_at: float = 0.0  # wall-clock time the Service endpoints last changed
    istio: dict[str, dict[str, Obj]] = field(default_factory=dict)  # Istio kind → namespace/name → object
    last_pod_ip: str = ""  # pod addresses are handed out round from here

    def to_json(self) -> Obj:
        return {"format": FORMAT, "prefix": self.prefix, "ledger": self.ledger, "next_veth": self.next_veth,
                "services": {k: s.body for k, s in self.services.items()},
                "deployments": {k: d.body for k, d in self.deployments.items()},
                "pods": {k: p.to_json() for k, p in self.pods.items()}, "rules": self.rules,
                "discovery": self.discovery.to_json() if self.discovery else None,
                "kubelet": self.kubelet.to_json() if self.kubelet else None, "endpoints_at": self.endpoints_at,
                "istio": self.istio, "last_pod_ip": self.last_pod_ip}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClusterState:
        return cls(str(data["prefix"]), list(data.get("ledger") or []), int(data.get("next_veth", 1)),
                   {k: ServiceRecord(v) for k, v in (data.get("services") or {}).items()},
                   {k: DeploymentRecord(v) for k, v in (data.get("deployments") or {}).items()},
                   {k: PodRecord.from_json(v) for k, v in (data.get("pods") or {}).items()},
                   dict(data.get("rules") or {}), _ref(data.get("discovery")), _ref(data.get("kubelet")),
                   float(data.get("endpoints_at", 0.0)), {k: dict(v) for k, v in (data.get("istio") or {}).items()},
                   str(data.get("last_pod_ip", "")))
