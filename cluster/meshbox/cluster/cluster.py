"""The local cluster: up/down, the ledger, pods, and keeping Service endpoints in step (needs root).

A node namespace holds a bridge, the kube-proxy-like DNAT and the discovery server; each pod is a
namespace with a veth on that bridge, a hostname (a UTS namespace held by a pause process) and a
hosts file for Service names. A kubelet process restarts exited containers and probes readiness.
Applying objects is workloads.py; reading them back is queries.py. See docs/local-cluster.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ruamel.yaml import YAML

from meshbox.api.defaults import DISCOVERY_HTTP_PORT, DISCOVERY_PORT, PROXY_GID, PROXY_UID
from meshbox.api.kube.endpoints import port_endpoints
from meshbox.cluster import host, workload_identity
from meshbox.cluster.addressing import AddressError, check_prefix, next_pod_ip, pod_netns, service_chain
from meshbox.cluster.containers import BASE_ENV, run_init, start_container, start_pause
from meshbox.cluster.executor import NETNS_ETC, NetworkExecutor
from meshbox.cluster.host import HostError, ProcessRef
from meshbox.cluster.images import bin_dir, is_agent, launch_for
from meshbox.cluster.metrics_scraper import MetricsScraper, ScraperError
from meshbox.cluster.model import ClusterState, Obj, PodRecord
from meshbox.cluster.netplan import ServicePort
from meshbox.cluster.state import StateDir, default_state_dir

POD_GRACE = 10.0  # seconds a pod's containers get to drain after SIGTERM (kubelet's default is 30)
RUN_AS_PROXY_UID = ("meshbox.api", "meshbox.agent", "meshbox.proxy")  # what the proxy container imports
ENDPOINT_DRAIN = 0.3  # seconds between a pod leaving the Service NAT and its containers' SIGTERM
ENDPOINT_DRAIN_WITH_DISCOVERY = 1.0  # ... when proxies must first hear of it (discovery polls its registry)


class ClusterError(RuntimeError):
    """Something the user asked for cannot be done; the message says what and why."""


def now_text() -> str:
    """Kubernetes' timestamp format, for creationTimestamp."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def yaml_text(obj: Obj) -> str:
    """Block-style YAML of a plain object."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(obj, buf)
    return buf.getvalue()


def tail(path: Path, lines: int = 15) -> str:
    """The last lines of a log, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def registry_name(kind: str, namespace: str, name: str) -> str:
    """File name of an object in the discovery registry (DNS labels hold no dots)."""
    return f"{kind.lower()}.{namespace}.{name}.yaml"


class LocalCluster:
    """One local cluster, stored in a state directory."""

    def __init__(self, state_dir: Path | None = None) -> None:
        self.dir = StateDir(state_dir or default_state_dir())

    # ---- ledger: record before making, so down can always undo ----

    def record(self, state: ClusterState, entry: Obj) -> None:
        """Note something about to be made, durably."""
        state.ledger.append(entry)
        self.dir.save(state)

    @staticmethod
    def forget(state: ClusterState, entry: Obj) -> None:
        """Drop a ledger entry for something already removed."""
        with contextlib.suppress(ValueError):
            state.ledger.remove(entry)

    def record_process(self, state: ClusterState, ref: ProcessRef) -> None:
        """Note a process just started."""
        self.record(state, {"type": "process", **ref.to_json()})

    def _teardown(self, state: ClusterState) -> None:
        # Processes first (all at once), then namespaces, then files.
        net = NetworkExecutor(state.prefix)
        entries = list(reversed(state.ledger))
        host.stop([ProcessRef.from_json(e) for e in entries if e["type"] == "process"])
        for entry in entries:
            if entry["type"] == "netns":
                net.remove_netns(entry["name"])
            elif entry["type"] == "path":
                net.remove_path(entry["path"])
            elif entry["type"] == "emptydir":
                net.remove_empty_dir(entry["path"])
        for path in (self.dir.registry, self.dir.logs, self.dir.staging):
            net.remove_path(str(path))
        for path in (self.dir.file, self.dir.root / "lock"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.root.rmdir()

    # ---- up / down ----

    def up(self, prefix: str = "mbx", *, discovery: bool = True, prometheus: bool = True) -> list[str]:
        """Make the node namespace (bridge, Service NAT), start the kubelet, the discovery server and
        Prometheus."""
        try:
            check_prefix(prefix)
        except AddressError as exc:
            raise ClusterError(str(exc)) from None
        with self.dir.locked():
            if self.dir.exists():
                state = self.dir.load()
                if NetworkExecutor(state.prefix).node_exists():
                    return [f"local cluster {state.prefix!r} is already up (state in {self.dir.root})"]
                raise ClusterError(f"{self.dir.root} holds a cluster whose node namespace is gone: "
                                   "run `meshctl local down` first")
            net = NetworkExecutor(prefix)
            if net.node_exists():
                raise ClusterError(f"network namespace {net.node} already exists (another cluster with prefix "
                                   f"{prefix!r}?): pick another --prefix or state directory")
            notes = self._let_proxy_uid_run()
            self.dir.make_dirs()
            state = ClusterState(prefix)
            self.dir.save(state)
            try:
                self.record(state, {"type": "netns", "name": net.node})
                net.make_node()
                self.sync(state)
                if discovery:
                    self._start_discovery(state)
                self._start_kubelet(state)
                if prometheus:
                    self._start_scraper(state)
            except (HostError, ClusterError, ScraperError) as exc:
                self._teardown(state)
                raise ClusterError(f"local cluster not started, everything made was removed: {exc}") from None
        return [*notes, f"local cluster {prefix!r} is up: node namespace {net.node}, state in {self.dir.root}"]

    def down(self) -> list[str]:
        """Remove every namespace, process and file the cluster made (safe to run twice)."""
        with self.dir.locked():
            if not self.dir.exists():
                with contextlib.suppress(OSError):
                    (self.dir.root / "lock").unlink()
                    self.dir.root.rmdir()
                return [f"no local cluster in {self.dir.root}: nothing to remove"]
            state = self.dir.load()
            self._teardown(state)
        return [f"local cluster {state.prefix!r} removed"]

    def _probe_proxy_uid(self) -> subprocess.CompletedProcess[str]:
        imports = ", ".join(RUN_AS_PROXY_UID)
        return subprocess.run(["setpriv", f"--reuid={PROXY_UID}", f"--regid={PROXY_GID}", "--clear-groups", "--",
                               str(bin_dir() / "python"), "-c", f"import {imports}"],
                              capture_output=True, text=True, check=False)

    def _let_proxy_uid_run(self) -> list[str]:
        """Make sure the proxy's UID (1337) can run the agent and proxy from this venv.

        If it cannot, give 'others' search permission (x only, no listing) on the directories
        above the venv and the packages, as a container image would have them; say so.
        """
        if self._probe_proxy_uid().returncode == 0:
            return []
        opened: list[str] = []
        places = [bin_dir()]
        for name in RUN_AS_PROXY_UID:
            spec = importlib.util.find_spec(name)
            if spec and spec.submodule_search_locations:
                places += [Path(p) for p in spec.submodule_search_locations]
        for place in places:
            for directory in [place, *place.parents]:
                mode = directory.stat().st_mode
                if not mode & stat.S_IXOTH:
                    directory.chmod(mode | stat.S_IXOTH)
                    opened.append(str(directory))
        probe = self._probe_proxy_uid()
        if probe.returncode != 0:
            raise ClusterError(f"UID {PROXY_UID} (the proxy's user) cannot run {bin_dir() / 'python'}: "
                               f"{probe.stderr.strip()[-300:]}")
        return [f"gave others search permission (o+x) on {', '.join(opened)} so UID {PROXY_UID} can run the proxy"]

    def _node_log(self, name: str) -> Path:
        log_dir = self.dir.logs / "node"
        log_dir.mkdir(exist_ok=True)
        return log_dir / name

    def _start_discovery(self, state: ClusterState) -> None:
        binary = bin_dir() / "meshbox-discovery"
        if not binary.exists():
            raise ClusterError(f"meshbox-discovery is not installed next to meshctl ({binary})")
        node = NetworkExecutor(state.prefix).node
        log = self._node_log("discovery.log")
        self.record(state, {"type": "path", "path": str(workload_identity.security_dir(self.dir.root))})
        ref = host.spawn(["ip", "netns", "exec", node, str(binary), "--registry-dir", str(self.dir.registry),
                          "--grpc-port", str(DISCOVERY_PORT), "--http-port", str(DISCOVERY_HTTP_PORT),
                          *workload_identity.discovery_args(self.dir.root)],
                         log=log, env=BASE_ENV)
        state.discovery = ref
        self.record_process(state, ref)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not host.alive(ref):
                raise ClusterError(f"meshbox-discovery exited at start; its log ({log}):\n{tail(log)}")
            if host.http_status(node, f"http://127.0.0.1:{DISCOVERY_HTTP_PORT}/ready") == 200:
                return
            time.sleep(0.2)
        raise ClusterError(f"meshbox-discovery not ready after 20s; its log ({log}):\n{tail(log)}")

    def _start_kubelet(self, state: ClusterState) -> None:
        """The loop that restarts exited containers and keeps readiness and endpoints current (kubelet.py)."""
        log = self._node_log("kubelet.log")
        ref = host.spawn([sys.executable, "-m", "meshbox.cluster.kubelet", "--state-dir", str(self.dir.root)],
                         log=log, env=dict(BASE_ENV, PYTHONUNBUFFERED="1"))
        if state.kubelet is not None:
            self.forget(state, {"type": "process", **state.kubelet.to_json()})
        state.kubelet = ref
        self.record_process(state, ref)

    def scraper(self, prefix: str) -> MetricsScraper:
        """The cluster's Prometheus (docs/observability.md)."""
        return MetricsScraper(self.dir.root, NetworkExecutor(prefix).node)

    def _start_scraper(self, state: ClusterState) -> None:
        scraper = self.scraper(state.prefix)
        self.record(state, {"type": "path", "path": str(scraper.dir)})
        refs = scraper.start(state.pods.values(), DISCOVERY_HTTP_PORT)
        for ref in refs:
            self.record_process(state, ref)
        scraper.wait_ready(refs)

    def ensure_kubelet(self) -> None:
        """Start the kubelet again if it is gone (a cluster made by an older meshctl, or a crash)."""
        with self.dir.locked():
            self.load_up()

    def load_up(self) -> ClusterState:
        """The state of a running cluster (the lock held); its kubelet is started again if it is gone."""
        state = self.dir.load()
        if not NetworkExecutor(state.prefix).node_exists():
            raise ClusterError(f"the cluster in {self.dir.root} is not running (node namespace gone): "
                               "run `meshctl local down` then `meshctl local up`")
        if state.kubelet is None or not host.alive(state.kubelet):
            self._start_kubelet(state)
        return state

    # ---- pods ----

    def create_pod(self, state: ClusterState, pod: Obj) -> str | None:
        """Make a pod's namespace and start its containers; returns an error text if it did not start."""
        try:
            return self._start_pod(state, pod)
        except HostError as exc:
            key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            if key in state.pods:
                state.pods[key].phase = "Failed"
                self.dir.save(state)
            return f"pod {pod['metadata']['name']}: could not be started: {exc}"

    def _start_pod(self, state: ClusterState, pod: Obj) -> str | None:
        meta = pod["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        meta["creationTimestamp"] = now_text()
        ip = state.last_pod_ip = next_pod_ip((r.ip for r in state.pods.values()), state.last_pod_ip)
        rec = PodRecord(pod, ip, pod_netns(state.prefix, namespace, name), state.next_veth)
        state.next_veth += 1
        state.pods[rec.key] = rec
        net = NetworkExecutor(state.prefix)
        log_dir = self.dir.pod_log_dir(namespace, name)
        if not NETNS_ETC.exists():
            self.record(state, {"type": "emptydir", "path": str(NETNS_ETC)})
        self.record(state, {"type": "netns", "name": rec.netns})
        self.record(state, {"type": "path", "path": str(net.etc(rec.netns))})
        net.make_pod_network(rec.netns, rec.veth, rec.ip)
        net.write_names(rec.netns, name, rec.ip, namespace, self._service_names(state))
        log_dir.mkdir(parents=True, exist_ok=True)
        rec.pause = start_pause(rec.netns, name, log_dir / ".pause.log")
        self.record_process(state, rec.pause)
        # Containers join the pause process's UTS namespace: only once it has made it and set the hostname.
        host.wait_for_exec(rec.pause, "sleep")
        self.write_pod_registry(rec)
        for container in rec.spec.get("initContainers") or []:
            log = log_dir / f"{container['name']}.log"
            code = rec.init[container["name"]] = run_init(rec, container, log)
            if code != 0:
                rec.phase = "Init:Error"
                self.dir.save(state)
                return (f"pod {name}: init container {container['name']!r} failed (exit {code}); "
                        f"its log ({log}):\n{tail(log)}")
        agents = [launch for c in rec.spec["containers"] if is_agent(launch := launch_for(c, init=False))]
        if agents:
            if not workload_identity.POD_SECRETS.exists():
                self.record(state, {"type": "emptydir", "path": str(workload_identity.POD_SECRETS)})
            self.record(state, {"type": "path", "path": str(workload_identity.pod_dir(rec.netns))})
            try:
                workload_identity.provision(self.dir.root, rec.netns, pod, agents[0].uid, agents[0].gid)
            except workload_identity.IdentityError as exc:
                rec.phase = "Failed"
                self.dir.save(state)
                return f"pod {name}: {exc}"
        for container in rec.spec["containers"]:
            started = start_container(rec, container, log_dir / f"{container['name']}.log")
            rec.containers[container["name"]] = started
            self.record_process(state, started.ref)
        rec.phase = "Running"
        self.dir.save(state)
        return None

    def delete_pods(self, state: ClusterState, keys: list[str]) -> None:
        """Take pods out of the Services, stop them together (the agents drain in parallel), then remove
        their namespaces and files."""
        recs = [state.pods.pop(key) for key in keys]
        if not recs:
            return
        # As Kubernetes removes a terminating pod's endpoints before it stops its containers; requests
        # already on their way finish, and the proxies hear of it from discovery, before the stop.
        for rec in recs:
            self.dir.remove_registry(registry_name("Pod", rec.namespace, rec.name))
        self.sync(state)
        if any(rec.ready for rec in recs):
            time.sleep(ENDPOINT_DRAIN_WITH_DISCOVERY if state.discovery else ENDPOINT_DRAIN)
        host.stop([c.ref for rec in recs for c in rec.containers.values()], grace=POD_GRACE)
        host.stop([rec.pause for rec in recs if rec.pause])
        net = NetworkExecutor(state.prefix)
        for rec in recs:
            net.remove_netns(rec.netns)
            net.remove_path(str(self.dir.pod_log_dir(rec.namespace, rec.name)))
            identity = workload_identity.pod_dir(rec.netns)
            net.remove_path(str(identity))
            self.forget(state, {"type": "path", "path": str(identity)})
            refs = [*(c.ref for c in rec.containers.values()), *([rec.pause] if rec.pause else [])]
            entries: list[Obj] = [{"type": "netns", "name": rec.netns},
                                  {"type": "path", "path": str(net.etc(rec.netns))},
                                  *({"type": "process", **r.to_json()} for r in refs)]
            for entry in entries:
                self.forget(state, entry)
        self.dir.save(state)

    def write_pod_registry(self, rec: PodRecord) -> None:
        """The pod as discovery reads it: its IP and its Ready condition."""
        body = {**rec.body, "status": rec.status()}
        self.dir.write_registry(registry_name("Pod", rec.namespace, rec.name), yaml_text(body))

    @staticmethod
    def _service_names(state: ClusterState) -> list[tuple[str, str, str]]:
        return [(s.name, s.namespace, s.cluster_ip) for s in state.services.values()]

    def sync(self, state: ClusterState) -> None:
        """Service DNAT in the node (ready endpoints only) and every pod's hosts file, from the current objects."""
        pods = [rec.as_pod() for rec in state.pods.values() if rec.phase == "Running"]
        ports: list[ServicePort] = []
        for record in state.services.values():
            service = record.as_service()
            for port in service.ports:
                backends = tuple((e.ip, e.port) for e in port_endpoints(service, port, pods) if e.ready)
                port_name = port.name or str(port.port)
                ports.append(ServicePort(f"{service.namespace}/{service.name}:{port_name}",
                                         service_chain(service.namespace, service.name, port_name),
                                         service.cluster_ip, port.port, backends))
        net = NetworkExecutor(state.prefix)
        net.apply_service_rules(ports)
        names = self._service_names(state)
        for rec in state.pods.values():
            net.write_names(rec.netns, rec.name, rec.ip, rec.namespace, names)
        self.scraper(state.prefix).write_targets(state.pods.values())
