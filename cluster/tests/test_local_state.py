"""The typed state (state.json in and out, the first format still readable) and the kubelet's
readiness bookkeeping, without root: real files in a temporary state directory, processes that
are this test's own."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from meshbox.api.kube.endpoints import port_endpoints
from meshbox.cluster.cluster import LocalCluster
from meshbox.cluster.host import ProcessRef, start_time
from meshbox.cluster.kubelet import apply_observations
from meshbox.cluster.model import ClusterState, ContainerState, PodRecord, ServiceRecord
from meshbox.cluster.state import StateDir, StateError

POD = {"apiVersion": "v1", "kind": "Pod",
       "metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"},
                    "ownerReferences": [{"kind": "Deployment", "name": "web"}]},
       "spec": {"containers": [{"name": "app", "image": "e", "ports": [{"containerPort": 8080, "name": "http"}]}]}}
SERVICE = {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.17", "selector": {"app": "web"},
                    "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


def me() -> ContainerState:
    """A container record naming this very process (alive for as long as the test runs)."""
    return ContainerState(os.getpid(), start_time(os.getpid()) or -1, 0)


def record(*, ready: bool) -> PodRecord:
    rec = PodRecord(json.loads(json.dumps(POD)), "10.244.0.2", "x-default-web-1", 1, phase="Running", ready=ready)
    rec.containers["app"] = me()
    rec.containers["app"].ready = ready
    return rec


def test_state_round_trips_through_json(tmp_path: Path) -> None:
    state = ClusterState("t1", next_veth=2, pods={"default/web-1": record(ready=True)},
                         services={"default/web": ServiceRecord(SERVICE)}, discovery=ProcessRef(5, 6))
    directory = StateDir(tmp_path)
    directory.save(state)
    again = directory.load()
    assert again == state
    assert again.pods["default/web-1"].owner == "web" and again.pods["default/web-1"].restarts == 0


def test_first_format_state_is_still_read(tmp_path: Path) -> None:
    """A state.json written by the meshctl before typed state: no restarts, readiness or kubelet."""
    old: dict[str, Any] = {
        "format": 1, "prefix": "mbx", "ledger": [{"type": "netns", "name": "mbx-node"}], "next_veth": 2,
        "services": {"default/web": SERVICE}, "deployments": {}, "rules": {}, "discovery": {"pid": 9, "start": 10},
        "pods": {"default/web-1": {"body": POD, "ip": "10.244.0.2", "netns": "mbx-default-web-1", "veth": 1,
                                   "pause": {"pid": 11, "start": 12}, "init": {"init": {"exit": 0}},
                                   "containers": {"app": {"pid": 13, "start": 14, "uid": 0}}, "phase": "Running"}},
    }
    (tmp_path / "state.json").write_text(json.dumps(old))
    state = StateDir(tmp_path).load()
    rec = state.pods["default/web-1"]
    assert (rec.ip, rec.init, rec.containers["app"].restarts, rec.ready) == ("10.244.0.2", {"init": 0}, 0, False)
    assert state.kubelet is None and state.discovery == ProcessRef(9, 10)
    (tmp_path / "state.json").write_text(json.dumps({**old, "format": 7}))
    with pytest.raises(StateError, match="not a meshctl local state file"):
        StateDir(tmp_path).load()


def test_only_ready_pods_are_ready_endpoints() -> None:
    service = ServiceRecord(SERVICE).as_service()
    ready, unready = record(ready=True), record(ready=False)
    unready.body["metadata"]["name"] = "web-2"
    unready.ip = "10.244.0.3"
    found = port_endpoints(service, service.ports[0], [ready.as_pod(), unready.as_pod()])
    assert [(e.ip, e.port, e.ready) for e in found] == [("10.244.0.2", 8080, True), ("10.244.0.3", 8080, False)]


def test_kubelet_records_readiness_and_tells_discovery(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path)
    cluster.dir.make_dirs()
    rec = record(ready=False)
    state = ClusterState("t1", pods={rec.key: rec})
    app = rec.containers["app"]
    seen = {(rec.key, "app", app.pid, app.start): (True, True)}
    assert apply_observations(cluster, state, seen, 100.0) is True
    assert rec.ready and app.ready
    registry = cluster.dir.registry / "pod.default.web-1.yaml"
    assert "status: 'True'" in registry.read_text() and "type: Ready" in registry.read_text()
    # The same observation again changes nothing; one about another process (replaced meanwhile) is ignored.
    assert apply_observations(cluster, state, seen, 101.0) is False
    stale = {(rec.key, "app", app.pid + 1, app.start): (True, False)}
    assert apply_observations(cluster, state, stale, 102.0) is False and rec.ready
    # Failing its probe takes the pod out.
    assert apply_observations(cluster, state, {(rec.key, "app", app.pid, app.start): (True, False)}, 103.0)
    assert not rec.ready and "status: 'False'" in registry.read_text()
