"""The local cluster: up/down, apply/delete, and what get/exec/logs need (network namespaces, processes).

A node namespace holds a bridge, the kube-proxy-like DNAT and the discovery server; each pod is a
namespace with a veth on that bridge, a hostname (a UTS namespace held by a pause process) and a
hosts file for Service names. Containers are processes started in the pod's namespaces as the
container's user. See docs/tutorial.md.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import secrets
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from ruamel.yaml import YAML

from meshbox.cluster import host
from meshbox.cluster.addressing import (
    RESOLV_CONF,
    AddressError,
    check_cluster_ip,
    check_prefix,
    hosts_file,
    next_cluster_ip,
    next_pod_ip,
    node_netns,
    pod_netns,
    service_chain,
)
from meshbox.cluster.host import HostError, ProcessRef
from meshbox.cluster.images import ImageError, Launch, bin_dir, launch_for
from meshbox.cluster.metrics_scraper import MetricsScraper, ScraperError
from meshbox.cluster.netplan import ServicePort, node_commands, node_rules, pod_commands
from meshbox.cluster.objects import (
    ManifestError,
    Obj,
    Resource,
    container_env,
    pod_from_deployment,
    selector_matches,
    service_endpoints,
    template_hash,
)
from meshbox.cluster.state import StateDir, default_state_dir, empty_state, write_atomically

NETNS_ETC = Path("/etc/netns")
DISCOVERY_GRPC_PORT = 15010
DISCOVERY_HTTP_PORT = 15014
INIT_TIMEOUT = 60.0
POD_GRACE = 10.0  # seconds a pod's containers get to drain after SIGTERM (kubelet's default is 30)
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
RUN_AS_PROXY_UID = ("meshbox.api", "meshbox.agent", "meshbox.proxy")  # what the proxy container imports
DEPLOYMENT_NAME_MAX = 46  # leaves room for -<10 hex>-<5 chars> within 63


class ClusterError(RuntimeError):
    """Something the user asked for cannot be done; the message says what and why."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _same(a: Obj, b: Obj) -> bool:
    """Equal apart from fields the cluster sets (creation time, assigned ClusterIP)."""
    def strip(obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        obj.get("metadata", {}).pop("creationTimestamp", None)
        obj.get("spec", {}).pop("clusterIP", None)
        obj.get("spec", {}).pop("type", None)
        return obj
    return strip(a) == strip(b)


def _yaml_text(obj: Obj) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(obj, buf)
    return buf.getvalue()


def _tail(path: Path, lines: int = 15) -> str:
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

    def _record(self, state: Obj, entry: Obj) -> None:
        state["ledger"].append(entry)
        self.dir.save(state)

    def _forget(self, state: Obj, entry: Obj) -> None:
        with contextlib.suppress(ValueError):
            state["ledger"].remove(entry)

    def _undo(self, entry: Obj) -> None:
        """Remove one namespace or path of the ledger (processes are stopped together, before)."""
        kind = entry["type"]
        if kind == "netns":
            host.kill_netns_processes(entry["name"])
            host.run_quietly(["ip", "netns", "delete", entry["name"]])
        elif kind == "path":
            shutil.rmtree(entry["path"], ignore_errors=True)
        elif kind == "emptydir":
            with contextlib.suppress(OSError):
                Path(entry["path"]).rmdir()

    def _teardown(self, state: Obj) -> None:
        # Processes first (all at once), then namespaces, then files.
        entries = list(reversed(state["ledger"]))
        host.stop([ProcessRef.from_json(e) for e in entries if e["type"] == "process"])
        for entry in entries:
            if entry["type"] != "process":
                self._undo(entry)
        for path in (self.dir.registry, self.dir.logs, self.dir.staging):
            shutil.rmtree(path, ignore_errors=True)
        for path in (self.dir.file, self.dir.root / "lock"):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.root.rmdir()

    # ---- up / down ----

    def up(self, prefix: str = "mbx", *, discovery: bool = True, prometheus: bool = True) -> list[str]:
        """Make the node namespace (bridge, Service NAT) and start the discovery server and Prometheus."""
        try:
            check_prefix(prefix)
        except AddressError as exc:
            raise ClusterError(str(exc)) from None
        with self.dir.locked():
            if self.dir.exists():
                state = self.dir.load()
                if host.netns_exists(node_netns(state["prefix"])):
                    return [f"local cluster {state['prefix']!r} is already up (state in {self.dir.root})"]
                raise ClusterError(f"{self.dir.root} holds a cluster whose node namespace is gone: "
                                   "run `meshctl local down` first")
            node = node_netns(prefix)
            if host.netns_exists(node):
                raise ClusterError(f"network namespace {node} already exists (another cluster with prefix "
                                   f"{prefix!r}?): pick another --prefix or state directory")
            notes = self._let_proxy_uid_run()
            self.dir.make_dirs()
            state = empty_state(prefix)
            self.dir.save(state)
            try:
                self._record(state, {"type": "netns", "name": node})
                host.run(["ip", "netns", "add", node])
                for argv in node_commands(node):
                    host.run(argv)
                self._sync_network(state)
                if discovery:
                    self._start_discovery(state)
                if prometheus:
                    self._start_scraper(state)
            except (HostError, ClusterError, ScraperError) as exc:
                self._teardown(state)
                raise ClusterError(f"local cluster not started, everything made was removed: {exc}") from None
        return [*notes, f"local cluster {prefix!r} is up: node namespace {node}, state in {self.dir.root}"]

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
        return [f"local cluster {state['prefix']!r} removed"]

    def _probe_proxy_uid(self) -> subprocess.CompletedProcess[str]:
        imports = ", ".join(RUN_AS_PROXY_UID)
        return subprocess.run(["setpriv", "--reuid=1337", "--regid=1337", "--clear-groups", "--",
                               str(bin_dir() / "python"), "-c", f"import {imports}"],
                              capture_output=True, text=True, check=False)

    def _let_proxy_uid_run(self) -> list[str]:
        """Make sure UID 1337 can run the agent and proxy from this venv.

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
            raise ClusterError(f"UID 1337 (the proxy's user) cannot run {bin_dir() / 'python'}: "
                               f"{probe.stderr.strip()[-300:]}")
        return [f"gave others search permission (o+x) on {', '.join(opened)} so UID 1337 can run the proxy"]

    def _start_discovery(self, state: Obj) -> None:
        binary = bin_dir() / "meshbox-discovery"
        if not binary.exists():
            raise ClusterError(f"meshbox-discovery is not installed next to meshctl ({binary})")
        node = node_netns(state["prefix"])
        log_dir = self.dir.logs / "node"
        log_dir.mkdir(exist_ok=True)
        log = log_dir / "discovery.log"
        ref = host.spawn(["ip", "netns", "exec", node, str(binary), "--registry-dir", str(self.dir.registry),
                          "--grpc-port", str(DISCOVERY_GRPC_PORT), "--http-port", str(DISCOVERY_HTTP_PORT)],
                         log=log, env=BASE_ENV)
        state["discovery"] = ref.to_json()
        self._record(state, {"type": "process", **ref.to_json()})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if not host.alive(ref):
                raise ClusterError(f"meshbox-discovery exited at start; its log ({log}):\n{_tail(log)}")
            if host.http_status(node, f"http://127.0.0.1:{DISCOVERY_HTTP_PORT}/ready") == 200:
                return
            time.sleep(0.2)
        raise ClusterError(f"meshbox-discovery not ready after 20s; its log ({log}):\n{_tail(log)}")

    def scraper(self, prefix: str) -> MetricsScraper:
        """The cluster's Prometheus (docs/observability.md)."""
        return MetricsScraper(self.dir.root, node_netns(prefix))

    def _start_scraper(self, state: Obj) -> None:
        scraper = self.scraper(state["prefix"])
        self._record(state, {"type": "path", "path": str(scraper.dir)})
        refs = scraper.start(state["pods"].values(), DISCOVERY_HTTP_PORT)
        for ref in refs:
            self._record(state, {"type": "process", **ref.to_json()})
        scraper.wait_ready(refs)

    # ---- apply / delete ----

    def _load_up(self) -> Obj:
        state = self.dir.load()
        if not host.netns_exists(node_netns(state["prefix"])):
            raise ClusterError(f"the cluster in {self.dir.root} is not running (node namespace gone): "
                               "run `meshctl local down` then `meshctl local up`")
        return state

    def _check_workloads(self, state: Obj, resources: list[Resource]) -> None:
        """Everything that could fail about a workload, checked before anything is made."""
        for res in resources:
            if res.kind == "Deployment":
                spec = res.body["spec"]["template"]["spec"]
                pod = pod_from_deployment(res.body, f"{res.name}-check")
            elif res.kind == "Pod":
                spec, pod = res.body["spec"], res.body
                old = state["pods"].get(res.key)
                if old is not None and not _same(old["body"], res.body):
                    raise ClusterError(f"pod {res.name!r} exists with another spec: pods cannot be updated, "
                                       "delete it first")
            else:
                continue
            for init, key in ((True, "initContainers"), (False, "containers")):
                for container in spec.get(key) or []:
                    try:
                        launch_for(container, init=init)
                        container_env(container, pod, "10.244.0.2")
                    except (ImageError, ManifestError) as exc:
                        raise ClusterError(f"{res.label()}: {exc}") from None

    def _place_service(self, state: Obj, res: Resource) -> str:
        body = copy.deepcopy(res.body)
        spec = body["spec"]
        old = state["services"].get(res.key)
        used = [s["spec"]["clusterIP"] for k, s in state["services"].items() if k != res.key]
        wanted = spec.get("clusterIP")
        try:
            if old is not None:
                if wanted and wanted != old["spec"]["clusterIP"]:
                    raise ClusterError(f"service/{res.name}: spec.clusterIP is immutable "
                                       f"(is {old['spec']['clusterIP']}, asked {wanted})")
                spec["clusterIP"] = old["spec"]["clusterIP"]
            else:
                spec["clusterIP"] = check_cluster_ip(wanted, used) if wanted else next_cluster_ip(used)
        except AddressError as exc:
            raise ClusterError(f"service/{res.name}: {exc}") from None
        spec.setdefault("type", "ClusterIP")
        if old is not None and _same(old, body):
            return "unchanged"
        body["metadata"]["creationTimestamp"] = (old or body)["metadata"].get("creationTimestamp") or _now()
        state["services"][res.key] = body
        self.dir.write_registry(registry_name("Service", res.namespace, res.name), _yaml_text(body))
        return "configured" if old else "created"

    def apply(self, resources: list[Resource]) -> tuple[list[str], list[str]]:
        """Create or update objects; returns (kubectl-like lines, errors of pods that failed to start)."""
        with self.dir.locked():
            state = self._load_up()
            self._check_workloads(state, resources)
            order = {"Service": 0, "RouteRule": 1, "Deployment": 2, "Pod": 3}
            lines: list[str] = []
            errors: list[str] = []
            # Services first: every pod's hosts file and the discovery server know them before pods start.
            for res in sorted(resources, key=lambda r: order[r.kind]):
                if res.kind == "Service":
                    lines.append(f"service/{res.name} {self._place_service(state, res)}")
                    self.dir.save(state)
                    self._sync_network(state)
                elif res.kind == "RouteRule":
                    lines.append(f"routerule.routing.meshbox.io/{res.name} {self._apply_rule(state, res)}")
                elif res.kind == "Deployment":
                    lines.append(f"deployment.apps/{res.name} {self._apply_deployment(state, res, errors)}")
                else:
                    lines.append(f"pod/{res.name} {self._apply_pod(state, res, errors)}")
                self.dir.save(state)
            self._sync_network(state)
        return lines, errors

    def _apply_rule(self, state: Obj, res: Resource) -> str:
        old = state["rules"].get(res.key)
        if old is not None and _same(old, res.body):
            return "unchanged"
        body = copy.deepcopy(res.body)
        body["metadata"]["creationTimestamp"] = (old or body)["metadata"].get("creationTimestamp") or _now()
        state["rules"][res.key] = body
        self.dir.write_registry(registry_name("RouteRule", res.namespace, res.name), _yaml_text(body))
        return "configured" if old else "created"

    def _apply_deployment(self, state: Obj, res: Resource, errors: list[str]) -> str:
        old = state["deployments"].get(res.key)
        if old is not None and _same(old, res.body):
            return "unchanged"
        body = copy.deepcopy(res.body)
        body["metadata"]["creationTimestamp"] = (old or body)["metadata"].get("creationTimestamp") or _now()
        if old is not None:
            self._delete_pods(state, self._owned_pods(state, res.namespace, res.name))
        state["deployments"][res.key] = body
        self.dir.save(state)
        digest = template_hash(body)
        for _ in range(int(body["spec"].get("replicas", 1))):
            pod_name = f"{res.name[:DEPLOYMENT_NAME_MAX]}-{digest}-{secrets.token_hex(3)[:5]}"
            error = self._create_pod(state, pod_from_deployment(body, pod_name))
            if error:
                errors.append(error)
        return "configured" if old else "created"

    def _apply_pod(self, state: Obj, res: Resource, errors: list[str]) -> str:
        if res.key in state["pods"]:
            return "unchanged"
        body = copy.deepcopy(res.body)
        error = self._create_pod(state, body)
        if error:
            errors.append(error)
        return "created"

    def _owned_pods(self, state: Obj, namespace: str, deployment: str) -> list[str]:
        return [key for key, rec in state["pods"].items()
                if rec["body"]["metadata"]["namespace"] == namespace
                and any(o.get("kind") == "Deployment" and o.get("name") == deployment
                        for o in rec["body"]["metadata"].get("ownerReferences", []))]

    def delete(self, resources: list[Resource]) -> tuple[list[str], list[str]]:
        """Delete objects; returns (kubectl-like lines, not-found errors)."""
        with self.dir.locked():
            state = self._load_up()
            lines: list[str] = []
            errors: list[str] = []
            for res in resources:
                table = {"Service": "services", "Deployment": "deployments", "Pod": "pods",
                         "RouteRule": "rules"}[res.kind]
                if res.key not in state[table]:
                    errors.append(f'{res.kind.lower()}s "{res.name}" not found')
                    continue
                if res.kind == "Deployment":
                    self._delete_pods(state, self._owned_pods(state, res.namespace, res.name))
                if res.kind == "Pod":
                    self._delete_pods(state, [res.key])
                else:
                    del state[table][res.key]
                    self.dir.remove_registry(registry_name(res.kind, res.namespace, res.name))
                self.dir.save(state)
                lines.append(f'{res.kind.lower()} "{res.name}" deleted')
            self._sync_network(state)
        return lines, errors

    # ---- pods ----

    def _in_pod(self, rec: Obj, launch: Launch) -> list[str]:
        """argv that runs ``launch`` inside a pod: its network and UTS namespaces, its hosts file, its user."""
        argv = ["ip", "netns", "exec", rec["netns"], "nsenter", "-t", str(rec["pause"]["pid"]), "-u", "--"]
        if launch.uid != 0:
            argv += ["setpriv", f"--reuid={launch.uid}", f"--regid={launch.gid}", "--clear-groups", "--"]
        return argv + launch.argv

    def _env(self, rec: Obj, container: Obj, uid: int) -> dict[str, str]:
        env = dict(BASE_ENV, HOME="/root" if uid == 0 else "/", HOSTNAME=rec["body"]["metadata"]["name"])
        env.update(container_env(container, rec["body"], rec["ip"]))
        return env

    def _create_pod(self, state: Obj, pod: Obj) -> str | None:
        """Make a pod's namespace and start its containers; returns an error text if it did not start."""
        try:
            return self._start_pod(state, pod)
        except HostError as exc:
            key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
            if key in state["pods"]:
                state["pods"][key]["phase"] = "Failed"
                self.dir.save(state)
            return f"pod {pod['metadata']['name']}: could not be started: {exc}"

    def _start_pod(self, state: Obj, pod: Obj) -> str | None:
        meta = pod["metadata"]
        name, namespace = meta["name"], meta["namespace"]
        key = f"{namespace}/{name}"
        netns = pod_netns(state["prefix"], namespace, name)
        used = [r["ip"] for r in state["pods"].values()]
        meta["creationTimestamp"] = _now()
        rec: Obj = {"body": pod, "ip": next_pod_ip(used), "netns": netns, "veth": state["next_veth"],
                    "pause": None, "containers": {}, "init": {}, "phase": "Pending"}
        state["next_veth"] += 1
        state["pods"][key] = rec
        etc = NETNS_ETC / netns
        log_dir = self.dir.pod_log_dir(namespace, name)
        if not NETNS_ETC.exists():
            self._record(state, {"type": "emptydir", "path": str(NETNS_ETC)})
        self._record(state, {"type": "netns", "name": netns})
        self._record(state, {"type": "path", "path": str(etc)})
        host.run(["ip", "netns", "add", netns])
        for argv in pod_commands(node_netns(state["prefix"]), netns, rec["veth"], rec["ip"]):
            host.run(argv)
        etc.mkdir(parents=True, exist_ok=True)
        self._write_hosts(state, rec)
        log_dir.mkdir(parents=True, exist_ok=True)
        pause = host.spawn(["ip", "netns", "exec", netns, "unshare", "--uts", "--", "sh", "-c",
                            'hostname "$1" && exec sleep infinity', "pause", name],
                           log=log_dir / ".pause.log", env=BASE_ENV)
        rec["pause"] = pause.to_json()
        self._record(state, {"type": "process", **pause.to_json()})
        # Containers join the pause process's UTS namespace: only once it has made it and set the hostname.
        host.wait_for_exec(pause, "sleep")
        self._write_pod_registry(rec)
        spec = pod["spec"]
        for container in spec.get("initContainers") or []:
            launch = launch_for(container, init=True)
            log = log_dir / f"{container['name']}.log"
            with open(log, "ab") as out:
                try:
                    code = subprocess.run(self._in_pod(rec, launch), stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, env=self._env(rec, container, launch.uid),
                                          timeout=INIT_TIMEOUT, check=False).returncode
                except subprocess.TimeoutExpired:
                    code = -1
            rec["init"][container["name"]] = {"exit": code}
            if code != 0:
                rec["phase"] = "Init:Error"
                self.dir.save(state)
                return (f"pod {name}: init container {container['name']!r} failed (exit {code}); "
                        f"its log ({log}):\n{_tail(log)}")
        for container in spec["containers"]:
            launch = launch_for(container, init=False)
            ref = host.spawn(self._in_pod(rec, launch), log=log_dir / f"{container['name']}.log",
                             env=self._env(rec, container, launch.uid))
            rec["containers"][container["name"]] = {**ref.to_json(), "uid": launch.uid}
            self._record(state, {"type": "process", **ref.to_json()})
        rec["phase"] = "Running"
        self.dir.save(state)
        return None

    def _delete_pods(self, state: Obj, keys: list[str]) -> None:
        """Stop pods together (the agents drain in parallel), then remove their namespaces and files."""
        recs = [state["pods"].pop(key) for key in keys]
        host.stop([ProcessRef.from_json(c) for rec in recs for c in rec["containers"].values()], grace=POD_GRACE)
        host.stop([ProcessRef.from_json(rec["pause"]) for rec in recs if rec["pause"]])
        for rec in recs:
            host.kill_netns_processes(rec["netns"])
            host.run_quietly(["ip", "netns", "delete", rec["netns"]])
            etc = NETNS_ETC / rec["netns"]
            shutil.rmtree(etc, ignore_errors=True)
            meta = rec["body"]["metadata"]
            self.dir.remove_registry(registry_name("Pod", meta["namespace"], meta["name"]))
            shutil.rmtree(self.dir.pod_log_dir(meta["namespace"], meta["name"]), ignore_errors=True)
            refs = [*rec["containers"].values(), *([rec["pause"]] if rec["pause"] else [])]
            for entry in [{"type": "netns", "name": rec["netns"]}, {"type": "path", "path": str(etc)},
                          *({"type": "process", "pid": r["pid"], "start": r["start"]} for r in refs)]:
                self._forget(state, entry)
        self.dir.save(state)

    def _write_pod_registry(self, rec: Obj) -> None:
        body = copy.deepcopy(rec["body"])
        body["status"] = {"phase": "Running", "podIP": rec["ip"], "hostIP": "10.244.0.1"}
        meta = body["metadata"]
        self.dir.write_registry(registry_name("Pod", meta["namespace"], meta["name"]), _yaml_text(body))

    def _write_hosts(self, state: Obj, rec: Obj) -> None:
        services = [(s["metadata"]["name"], s["metadata"]["namespace"], s["spec"]["clusterIP"])
                    for s in state["services"].values()]
        meta = rec["body"]["metadata"]
        text = hosts_file(meta["name"], rec["ip"], services, meta["namespace"])
        write_atomically(NETNS_ETC / rec["netns"] / "hosts", text.encode())
        write_atomically(NETNS_ETC / rec["netns"] / "resolv.conf", RESOLV_CONF.encode())

    def _sync_network(self, state: Obj) -> None:
        """Service DNAT in the node and every pod's hosts file, from the current objects."""
        running = [(rec["body"], rec["ip"]) for rec in state["pods"].values() if rec["phase"] == "Running"]
        ports: list[ServicePort] = []
        for service in state["services"].values():
            meta = service["metadata"]
            for port, backends in service_endpoints(service, running):
                port_name = port.get("name") or str(port["port"])
                ports.append(ServicePort(f"{meta['namespace']}/{meta['name']}:{port_name}",
                                         service_chain(meta["namespace"], meta["name"], port_name),
                                         service["spec"]["clusterIP"], int(port["port"]), tuple(backends)))
        host.run(["ip", "netns", "exec", node_netns(state["prefix"]), "iptables-restore"], input_text=node_rules(ports))
        for rec in state["pods"].values():
            if (NETNS_ETC / rec["netns"]).is_dir():
                self._write_hosts(state, rec)
        self.scraper(state["prefix"]).write_targets(state["pods"].values())

    # ---- reading ----

    def state(self) -> Obj:
        """The recorded state (read-only use)."""
        return self.dir.load()

    def container_ready(self, rec: Obj, container: Obj) -> bool:
        """Running, and its readiness probe (or first port) answers inside the pod."""
        info = rec["containers"].get(container["name"])
        if not info or not host.alive(ProcessRef.from_json(info)):
            return False
        probe = (container.get("readinessProbe") or {}).get("httpGet")
        if probe:
            port = probe["port"]
            # Kubernetes lets a probe name one of the container's ports instead of its number.
            named = {p.get("name"): p["containerPort"] for p in container.get("ports") or [] if p.get("name")}
            port = named.get(port, port)
            code = host.http_status(rec["netns"], f"http://127.0.0.1:{port}{probe.get('path', '/')}")
            return 200 <= code < 400
        ports = container.get("ports") or []
        return host.tcp_open(rec["netns"], int(ports[0]["containerPort"])) if ports else True

    def pod_status(self, rec: Obj) -> tuple[int, int, str]:
        """(ready containers, containers, status text) as `kubectl get pods` shows them."""
        containers = rec["body"]["spec"]["containers"]
        if rec["phase"] != "Running":
            return 0, len(containers), rec["phase"]
        ready = sum(self.container_ready(rec, c) for c in containers)
        dead = [n for n, c in rec["containers"].items() if not host.alive(ProcessRef.from_json(c))]
        return ready, len(containers), "Error" if dead else "Running"

    def find_pods(self, state: Obj, namespace: str | None, selector: dict[str, str]) -> list[Obj]:
        """Pods in a namespace (all when None) whose labels match."""
        return [rec for rec in state["pods"].values()
                if (namespace is None or rec["body"]["metadata"]["namespace"] == namespace)
                and selector_matches(selector, rec["body"]["metadata"].get("labels") or {})]

    def pod(self, state: Obj, namespace: str, name: str) -> Obj:
        """One pod's record; ClusterError naming it when absent."""
        rec = state["pods"].get(f"{namespace}/{name}")
        if rec is None:
            raise ClusterError(f'pods "{name}" not found in namespace {namespace}')
        return rec

    def container_of(self, rec: Obj, container: str | None) -> Obj:
        """The named container, or the only/first one when no name is given."""
        containers = rec["body"]["spec"]["containers"] + (rec["body"]["spec"].get("initContainers") or [])
        names = [c["name"] for c in containers]
        if container is None:
            return containers[0]
        for c in containers:
            if c["name"] == container:
                return c
        raise ClusterError(f"container {container} is not valid for pod {rec['body']['metadata']['name']}: "
                           f"choose one of {names}")

    def exec_command(self, rec: Obj, container: str | None, command: list[str]) -> tuple[list[str], dict[str, str]]:
        """argv and environment that run ``command`` in a pod's container, as that container's user."""
        if rec["phase"] != "Running" or not rec["pause"]:
            raise ClusterError(f"pod {rec['body']['metadata']['name']} is not running ({rec['phase']})")
        spec = self.container_of(rec, container)
        info = rec["containers"].get(spec["name"])
        if info is None:
            raise ClusterError(f"container {spec['name']} is not running (init containers have exited)")
        uid = int(info["uid"])
        security = spec.get("securityContext") or {}
        launch = Launch(command, uid, int(security.get("runAsGroup", uid)))
        return self._in_pod(rec, launch), self._env(rec, spec, uid)

    def log_path(self, rec: Obj, container: str | None) -> Path:
        """A container's log file; a pod with several containers needs the name."""
        spec = rec["body"]["spec"]
        names = [c["name"] for c in spec["containers"]] + [c["name"] for c in spec.get("initContainers") or []]
        pod_name = rec["body"]["metadata"]["name"]
        if container is None:
            if len(spec["containers"]) > 1:
                raise ClusterError(f"a container name must be specified for pod {pod_name}, choose one of: {names}")
            container = names[0]
        if container not in names:
            raise ClusterError(f"container {container} is not valid for pod {pod_name}: choose one of {names}")
        meta = rec["body"]["metadata"]
        return self.dir.pod_log_dir(meta["namespace"], meta["name"]) / f"{container}.log"

    def wait_ready(self, namespace: str | None, selector: dict[str, str], timeout: float) -> list[str]:
        """Block until every selected pod has all containers ready; ClusterError on timeout or failure."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.dir.load()
            pods = self.find_pods(state, namespace, selector)
            if not pods:
                raise ClusterError("no pods match")
            report = {rec["body"]["metadata"]["name"]: self.pod_status(rec) for rec in pods}
            failed = [f"{n} ({s})" for n, (_, _, s) in report.items() if s not in ("Running",)]
            if failed:
                raise ClusterError(f"pods failed: {', '.join(failed)}")
            if all(r == t for r, t, _ in report.values()):
                return [f"pod/{n} condition met" for n in report]
            if time.monotonic() > deadline:
                waiting = ", ".join(f"{n} {r}/{t}" for n, (r, t, _) in report.items() if r != t)
                raise ClusterError(f"timed out after {timeout:.0f}s waiting for pods to be ready: {waiting}")
            time.sleep(0.3)

    def services(self, state: Obj, namespace: str | None) -> Iterable[Obj]:
        """Services in a namespace (all when None)."""
        return [s for s in state["services"].values()
                if namespace is None or s["metadata"]["namespace"] == namespace]
