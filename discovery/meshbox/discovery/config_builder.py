"""Registry + node → that proxy's ProxyConfig. Pure; no I/O.

The outbound half (every Service, as seen from one namespace) is the same for all proxies of
that namespace, so it is built once per namespace and shared; the inbound half (the node's own
pod) is small and built per node. Both halves are valid on their own and never share a name,
so their union is valid too.
"""

from __future__ import annotations

from meshbox.api.defaults import ROOT_NAMESPACE
from meshbox.api.identity import WorkloadIdentity
from meshbox.api.kube.endpoints import matches, port_endpoints, resolve_target, selects
from meshbox.api.kube.objects import Pod, Service, ServicePort
from meshbox.api.protocols import is_http_port, upstream_protocol
from meshbox.api.v1 import discovery_pb2, security_pb2
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.validation import validate_proxy_config
from meshbox.api.workload import app_name, workload_name
from meshbox.discovery.registry import Registry
from meshbox.discovery.route_rules import (
    OtherTarget,
    RouteRule,
    build_port_routes,
    cluster_for,
    cluster_name,
    ordered_rules,
    subset_policy,
    targets,
)
from meshbox.discovery.security_policies import authorization_policies, effective_mtls

DISABLE = security_pb2.PeerAuthentication.MutualTLS.DISABLE

LOCALHOST = "127.0.0.1"
# The address of the per-port egress listeners serving ServiceEntries without addresses.
WILDCARD = "0.0.0.0"


def service_domains(service: Service, port: int, *, same_namespace: bool) -> list[str]:
    """Host header values of a service's virtual host; the bare name only from its own namespace."""
    if service.hosts:
        return [d for n in (*dict.fromkeys(service.hosts), service.cluster_ip) if n for d in (n, f"{n}:{port}")]
    names = [f"{service.name}.{service.namespace}", f"{service.name}.{service.namespace}.svc", service.fqdn,
             service.cluster_ip]
    if same_namespace:
        names.insert(0, service.name)
    return [d for n in names for d in (n, f"{n}:{port}")]


def pod_workload(pod: Pod) -> pc.WorkloadMetadata:
    """The workload serving behind a pod's endpoints (the rule the proxies apply to themselves)."""
    name = workload_name(pod.name)
    return pc.WorkloadMetadata(name=name, namespace=pod.namespace, app=app_name(pod.labels, name))


def accepts_mtls(registry: Registry, pod: Pod, port: int) -> bool:
    """The pod runs a meshbox sidecar and its peer authentication for ``port`` is not DISABLE: auto mTLS
    to it (with DISABLE its proxy takes plaintext only, so clients must not send TLS)."""
    if not pod.sidecar:
        return False
    if not registry.security_policies:
        return True
    modes = effective_mtls(registry.security_policies, root_namespace=ROOT_NAMESPACE, namespace=pod.namespace,
                           labels=pod.labels)
    return modes.for_port(port) != DISABLE


def endpoints_for(registry: Registry, service: Service, port: ServicePort) -> list[pc.Endpoint]:
    """Endpoints of one service port: from Endpoints/EndpointSlices when there are any, else from pods."""
    result = []
    sets = registry.endpoint_sets_of(service)
    if sets:
        for es in sets:
            number = es.ports.get(port.name)
            if number is None and len(es.ports) == 1:
                number = next(iter(es.ports.values()))
            if number is None and not es.ports and isinstance(port.target_port, int):
                number = port.target_port
            if number is None:
                continue
            for addr in es.addresses:
                pod = registry.pod(service.namespace, addr.pod_name) if addr.pod_name else None
                result.append(pc.Endpoint(address=addr.ip, port=number, labels=pod.labels if pod else {},
                                          workload=pod_workload(pod) if pod else None,
                                          sidecar=accepts_mtls(registry, pod, number) if pod else False))
    else:
        for endpoint in port_endpoints(service, port, registry.pods):
            pod = registry.pod(service.namespace, endpoint.pod_name)
            if endpoint.ready and pod is not None:
                result.append(pc.Endpoint(address=endpoint.ip, port=endpoint.port, labels=pod.labels,
                                          workload=pod_workload(pod),
                                          sidecar=accepts_mtls(registry, pod, endpoint.port)))
    result.sort(key=lambda e: (e.address, e.port))
    return result


def upstream_tls(registry: Registry, endpoints: list[pc.Endpoint], trust_domain: str) -> pc.UpstreamTls:
    """Auto mTLS to a service's sidecar endpoints; the server may be any service account of its pods."""
    accounts = set()
    for endpoint in endpoints:
        pod = registry.pod_by_ip(endpoint.address) if endpoint.sidecar else None
        if pod is not None:
            accounts.add(WorkloadIdentity(trust_domain, pod.namespace, pod.service_account).spiffe_id)
    return pc.UpstreamTls(mode=pc.UpstreamTls.AUTO, subject_alt_names=sorted(accounts))


class ConfigBuilder:
    """Builds proxy configs from one registry snapshot; caches the shared outbound half.

    With ``trust_domain`` (discovery runs the mesh CA), clusters get auto mutual TLS and inbound
    listeners their peer authentication mode and authorization policies; without it (``--plaintext``)
    proxies get neither.
    """

    def __init__(self, registry: Registry, *, trust_domain: str | None = None,
                 root_namespace: str = ROOT_NAMESPACE) -> None:
        self.registry = registry
        self.trust_domain = trust_domain
        self.root_namespace = root_namespace
        self.warnings: list[str] = []
        self._outbound: dict[str, pc.ProxyConfig] = {}
        self._by_fqdn = {s.fqdn: s for s in registry.services}
        self._rules = self._check_rules()

    def _check_rules(self) -> tuple[RouteRule, ...]:
        """The rules that can apply; the others are reported."""
        usable = []
        for rule in self.registry.route_rules:
            if not any(targets(rule, s) for s in self.registry.services):
                self.warnings.append(
                    f"RouteRule {rule.namespace}/{rule.name}: spec.destination: no Service "
                    f"{rule.spec.destination!r}; rule not applied"
                )
                continue
            missing = [(i, d) for i, d in enumerate(rule.spec.route) if d.host and not self._has_port(d.host, d.port)]
            for i, dest in missing:
                self.warnings.append(f"RouteRule {rule.namespace}/{rule.name}: spec.route[{i}].host: no Service "
                                     f"{dest.host!r} with port {dest.port}; rule not applied")
            if not missing:
                usable.append(rule)
        return tuple(usable)

    def _has_port(self, fqdn: str, port: int) -> bool:
        service = self._by_fqdn.get(fqdn)
        return service is not None and any(p.port == port for p in service.ports)

    def _add_other_targets(self, config: pc.ProxyConfig, others: list[OtherTarget]) -> None:
        """Clusters of other services that routes send to, unless those services made them already."""
        present = {c.name for c in config.clusters}
        for other in others:
            if other.cluster in present:
                continue
            present.add(other.cluster)
            service = self._by_fqdn[other.host]
            port = next(p for p in service.ports if p.port == other.port)
            labels = dict(other.labels)
            endpoints = [e for e in endpoints_for(self.registry, service, port) if matches(labels, e.labels)]
            policy = subset_policy(self.registry.destination_policies.get(other.host), other.subset)
            config.clusters.append(cluster_for(other.cluster, other.host, policy,
                                               upstream_protocol(port.name, port.app_protocol)))
            config.endpoints.append(pc.ClusterLoadAssignment(cluster_name=other.cluster, endpoints=endpoints))

    def build(self, node: discovery_pb2.Node) -> pc.ProxyConfig:
        """The whole config of the proxy ``node``."""
        config = pc.ProxyConfig()
        config.MergeFrom(self.outbound(node.pod_namespace or "default"))
        config.MergeFrom(self.inbound(node))
        return config

    def outbound(self, namespace: str) -> pc.ProxyConfig:
        """Clusters, endpoints, listeners and routes for every Service, as seen from ``namespace``."""
        cached = self._outbound.get(namespace)
        if cached is None:
            cached = self._outbound[namespace] = self._build_outbound(namespace)
        return cached

    def _build_outbound(self, namespace: str) -> pc.ProxyConfig:
        config = pc.ProxyConfig()
        route_configs: dict[int, pc.RouteConfiguration] = {}
        bound: set[tuple[str, int]] = set()
        others: list[OtherTarget] = []
        egress_ports: set[int] = set()
        for service in sorted(self.registry.services, key=lambda s: (s.namespace, s.name)):
            rules = ordered_rules(self._rules, service)
            # A ServiceEntry without an address: its HTTP ports are virtual hosts of the port's egress listener.
            addressless = bool(service.hosts) and not service.cluster_ip
            for port in service.ports:
                if addressless:
                    if not is_http_port(port.name, port.app_protocol):
                        if namespace == service.namespace:
                            self.warnings.append(f"ServiceEntry {service.namespace}/{service.name}: port "
                                                 f"{port.port} is not HTTP and the entry has no address; skipped")
                        continue
                    egress_ports.add(port.port)
                elif (service.cluster_ip, port.port) in bound:
                    if namespace == service.namespace:
                        self.warnings.append(f"Service {service.namespace}/{service.name}: {service.cluster_ip}:"
                                             f"{port.port} is already another Service's; port skipped")
                    continue
                else:
                    bound.add((service.cluster_ip, port.port))
                name = cluster_name("outbound", port.port, "", service.fqdn)
                endpoints = endpoints_for(self.registry, service, port)
                policy = self.registry.destination_policies.get(service.fqdn)
                cluster = cluster_for(name, service.fqdn, policy.policy if policy else None,
                                      upstream_protocol(port.name, port.app_protocol))
                tls = None
                if self.trust_domain is not None:
                    tls = upstream_tls(self.registry, endpoints, self.trust_domain)
                    cluster.tls.CopyFrom(tls)
                config.clusters.append(cluster)
                config.endpoints.append(pc.ClusterLoadAssignment(cluster_name=name, endpoints=endpoints))
                listener = pc.Listener(name=f"{service.cluster_ip}_{port.port}", direction=pc.OUTBOUND,
                                       address=service.cluster_ip, port=port.port)
                if is_http_port(port.name, port.app_protocol):
                    listener.protocol = pc.HTTP
                    listener.route_config = str(port.port)
                    routes = build_port_routes(service, port.port, rules, endpoints, policy)
                    if tls is not None:
                        for subset in routes.subset_clusters:
                            subset.tls.CopyFrom(tls)
                    config.clusters.extend(routes.subset_clusters)
                    config.endpoints.extend(routes.subset_endpoints)
                    others.extend(routes.other_targets)
                    rc = route_configs.setdefault(port.port, pc.RouteConfiguration(name=str(port.port)))
                    rc.virtual_hosts.append(pc.VirtualHost(
                        name=f"{service.fqdn}:{port.port}",
                        domains=service_domains(service, port.port, same_namespace=namespace == service.namespace),
                        routes=routes.routes,
                    ))
                else:
                    listener.protocol = pc.TCP
                    listener.cluster = name
                if not addressless:
                    config.listeners.append(listener)
        for port_number in sorted(egress_ports):
            # Hosts no virtual host of the port answers go to their original destination (or 502 NR under
            # REGISTRY_ONLY): the proxy applies the mesh's outbound traffic policy.
            config.listeners.append(pc.Listener(name=f"{WILDCARD}_{port_number}", direction=pc.OUTBOUND,
                                                address=WILDCARD, port=port_number, protocol=pc.HTTP,
                                                route_config=str(port_number), pass_unknown_hosts=True))
        self._add_other_targets(config, others)
        config.route_configs.extend(route_configs[p] for p in sorted(route_configs))
        validate_proxy_config(config, source=f"outbound config for namespace {namespace}")
        return config

    def inbound(self, node: discovery_pb2.Node) -> pc.ProxyConfig:
        """Listeners on the node's pod IP for each of its ports behind a Service, to the app on 127.0.0.1."""
        config = pc.ProxyConfig()
        namespace = node.pod_namespace or "default"
        pod = self.registry.pod(namespace, node.pod_name)
        pod_ip = node.pod_ip or (pod.ip if pod else "")
        if not pod_ip:
            return config
        labels = dict(pod.labels) if pod else dict(node.labels)
        seen: set[int] = set()
        secure = self.trust_domain is not None
        policies = self.registry.security_policies
        modes = effective_mtls(policies, root_namespace=self.root_namespace, namespace=namespace, labels=labels)
        authz = [pc.NamedAuthorizationPolicy(name=p.name, namespace=p.namespace, spec=p.spec)
                 for p in authorization_policies(policies, root_namespace=self.root_namespace, namespace=namespace,
                                                 labels=labels)
                 if isinstance(p.spec, security_pb2.AuthorizationPolicy)]
        for service in sorted(self.registry.services, key=lambda s: s.name):
            if not _selects(service, namespace, labels):
                continue
            for port in service.ports:
                target = resolve_target(port, _ports(pod))
                if target is None or target in seen:
                    continue
                seen.add(target)
                name = cluster_name("inbound", target, "", service.fqdn)
                config.clusters.append(pc.Cluster(name=name, lb_policy=pc.ROUND_ROBIN, service=service.fqdn,
                                              upstream_protocol=upstream_protocol(port.name, port.app_protocol)))
                config.endpoints.append(pc.ClusterLoadAssignment(
                    cluster_name=name, endpoints=[pc.Endpoint(address=LOCALHOST, port=target)]))
                listener = pc.Listener(name=f"{pod_ip}_{target}", direction=pc.INBOUND, address=pod_ip, port=target)
                if secure:
                    listener.mtls_mode = modes.for_port(target)
                    listener.authorization_policies.extend(authz)
                if is_http_port(port.name, port.app_protocol):
                    listener.protocol = pc.HTTP
                    listener.route_config = name
                    route = pc.Route(match=pc.RouteMatch(), clusters=[pc.WeightedCluster(cluster=name, weight=100)])
                    config.route_configs.append(pc.RouteConfiguration(
                        name=name, virtual_hosts=[pc.VirtualHost(name=name, domains=["*"], routes=[route])]))
                else:
                    listener.protocol = pc.TCP
                    listener.cluster = name
                config.listeners.append(listener)
        validate_proxy_config(config, source=f"inbound config for {node.id}")
        return config


def _selects(service: Service, namespace: str, labels: dict[str, str]) -> bool:
    return service.namespace == namespace and selects(service.selector, labels)


def _ports(pod: Pod | None) -> dict[str, int] | None:
    return dict(pod.ports) if pod else None
