"""Istio DestinationRule (networking.istio.io v1, v1beta1, v1alpha3) → meshbox DestinationPolicySpec.

meshbox implements subsets (by labels), the simple load balancers (round robin, least request,
random), consistent hashing on a header, cookie or the source IP, the connection pool limits
(circuit breaking), outlier detection, the retry budget and the connect timeout (traffic_policy);
every other traffic policy field is refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshbox.api.istio.fields import MESH_TODO, PROXY_TODO, Reader
from meshbox.api.istio.findings import ERROR, Finding
from meshbox.api.istio.objects import check_host, metadata, qualify_host, resource_label
from meshbox.api.istio.traffic_policy import connection_pool, consistent_hash, outlier_detection, retry_budget
from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import routing_pb2

# Istio's simple load balancers → the proxy's; LEAST_CONN is Istio's deprecated name of LEAST_REQUEST.
SIMPLE_LB = {"ROUND_ROBIN": pc.ROUND_ROBIN, "LEAST_REQUEST": pc.LEAST_REQUEST, "LEAST_CONN": pc.LEAST_REQUEST,
             "RANDOM": pc.RANDOM}
_SIMPLE_LB_REFUSED = ("PASSTHROUGH", "UNSPECIFIED")

_SPEC_REFUSED = {"exportTo": f"exportTo: {MESH_TODO} (every policy applies mesh-wide)",
                 "workloadSelector": MESH_TODO}
_POLICY_REFUSED = {"portLevelSettings": MESH_TODO, "tunnel": PROXY_TODO, "proxyProtocol": PROXY_TODO}
_LB_REFUSED = {"localityLbSetting": MESH_TODO, "zoneAwareLbSetting": MESH_TODO,
               "warmupDurationSecs": PROXY_TODO, "warmup": PROXY_TODO}


@dataclass(frozen=True)
class DestinationRule:
    name: str
    namespace: str
    source: str
    spec: routing_pb2.DestinationPolicySpec  # destination = the host's FQDN

    @property
    def resource(self) -> str:
        return f"DestinationRule {self.namespace}/{self.name}"


def translate_destination_rule(doc: Mapping[str, Any], *,
                               source: str) -> tuple[DestinationRule | None, list[Finding]]:
    """The object's policy and subsets, or None with the findings that keep it out."""
    r = Reader(source, resource_label(doc))
    name, namespace = metadata(r, doc)
    f = r.fields(doc.get("spec"), "spec", "DestinationRule", ("host", "trafficPolicy", "subsets"), _SPEC_REFUSED)
    spec = routing_pb2.DestinationPolicySpec()
    host = r.string(f.get("host"), "spec.host", required=True)
    if host and check_host(r, host, "spec.host"):
        spec.destination = qualify_host(host, namespace)
    if "trafficPolicy" in f:
        _policy(r, f["trafficPolicy"], "spec.trafficPolicy", spec.policy)
    names: set[str] = set()
    for i, item in enumerate(r.items(f.get("subsets"), "spec.subsets")):
        path = f"spec.subsets[{i}]"
        s = r.fields(item, path, "Subset", ("name", "labels", "trafficPolicy"), {})
        subset = spec.subsets.add(name=r.string(s.get("name"), f"{path}.name", required=True),
                                  labels=r.labels(s.get("labels"), f"{path}.labels"))
        if subset.name in names:
            r.invalid(f"{path}.name", f"duplicate subset {subset.name!r}")
        names.add(subset.name)
        if not subset.labels:
            r.invalid(f"{path}.labels", "a subset needs labels (meshbox selects its pods by them)")
        if "trafficPolicy" in s:
            _policy(r, s["trafficPolicy"], f"{path}.trafficPolicy", subset.policy)
    if any(x.severity == ERROR for x in r.findings):
        return None, r.findings
    return DestinationRule(name, namespace, source, spec), r.findings


def _policy(r: Reader, data: Any, path: str, out: routing_pb2.ClusterPolicy) -> None:
    f = r.fields(data, path, "TrafficPolicy",
                 ("loadBalancer", "connectionPool", "outlierDetection", "retryBudget", "tls"), _POLICY_REFUSED)
    if "loadBalancer" in f:
        where = f"{path}.loadBalancer"
        lb = r.fields(f["loadBalancer"], where, "LoadBalancerSettings", ("simple", "consistentHash"), _LB_REFUSED)
        simple = lb.get("simple")
        if simple in SIMPLE_LB:
            out.lb_policy = SIMPLE_LB[simple]
        elif simple in _SIMPLE_LB_REFUSED:
            r.refuse(f"{where}.simple", f"{simple}: {PROXY_TODO} (it has {', '.join(SIMPLE_LB)})")
        elif simple is not None:
            r.invalid(f"{where}.simple", f"expected one of {', '.join([*SIMPLE_LB, *_SIMPLE_LB_REFUSED])}, "
                                         f"got {simple!r}")
        if "consistentHash" in lb:
            if simple is not None:
                r.invalid(where, "simple and consistentHash exclude each other")
            out.lb_policy = pc.RING_HASH
            consistent_hash(r, lb["consistentHash"], f"{where}.consistentHash", out.hash_policy)
    if "connectionPool" in f:
        connection_pool(r, f["connectionPool"], f"{path}.connectionPool", out)
    if "outlierDetection" in f:
        outlier_detection(r, f["outlierDetection"], f"{path}.outlierDetection", out.outlier_detection)
    if "retryBudget" in f:
        retry_budget(r, f["retryBudget"], f"{path}.retryBudget", out.circuit_breakers.retry_budget)
    if "tls" in f:
        tls = r.fields(f["tls"], f"{path}.tls", "ClientTLSSettings", ("mode",),
                       {k: MESH_TODO for k in ("clientCertificate", "privateKey", "caCertificates", "credentialName",
                                               "subjectAltNames", "sni", "insecureSkipVerify", "caCrl")})
        mode = tls.get("mode", "DISABLE")
        if mode != "DISABLE":
            r.refuse(f"{path}.tls.mode", f"{mode}: {MESH_TODO} (sidecars talk plain TCP; only DISABLE)")
