"""The security part of the config model: Istio's PeerAuthentication / AuthorizationPolicy YAML,
SPIFFE identities, local-cluster tokens and the mesh config's trust domain."""

from __future__ import annotations

import pytest

from meshbox.api import local_tokens
from meshbox.api.identity import IdentityError, WorkloadIdentity, parse_spiffe_id
from meshbox.api.loader import ConfigError, iter_yaml_documents, parse_mesh_config
from meshbox.api.security_policy import parse_security_policy
from meshbox.api.v1 import security_pb2
from meshbox.api.validation import ValidationError

PEER = """
apiVersion: security.istio.io/{version}
kind: PeerAuthentication
metadata: {{name: strict-db, namespace: prod}}
spec:
  selector:
    matchLabels: {{app: db}}
  mtls: {{mode: STRICT}}
  portLevelMtls:
    8080: {{mode: PERMISSIVE}}
"""

AUTHZ = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: frontend-only, namespace: prod}
spec:
  selector: {matchLabels: {app: api}}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/prod/sa/frontend"]
        notNamespaces: ["test-*"]
    to:
    - operation:
        ports: ["8080"]
        methods: ["GET", "HEAD"]
        paths: ["/api/*"]
        notPaths: ["/api/admin*"]
    when:
    - key: request.headers[x-tenant]
      values: ["acme"]
"""


def one(text: str) -> object:
    return next(iter(iter_yaml_documents(text)))


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_istio_peer_authentication_is_read(version: str) -> None:
    policy = parse_security_policy(one(PEER.format(version=version)), source="pa.yaml")
    assert (policy.kind, policy.name, policy.namespace) == ("PeerAuthentication", "strict-db", "prod")
    spec = policy.spec
    assert isinstance(spec, security_pb2.PeerAuthentication)
    assert spec.mtls.mode == security_pb2.PeerAuthentication.MutualTLS.STRICT
    assert spec.port_level_mtls[8080].mode == security_pb2.PeerAuthentication.MutualTLS.PERMISSIVE
    assert dict(spec.selector.match_labels) == {"app": "db"}


def test_istio_authorization_policy_is_read() -> None:
    policy = parse_security_policy(one(AUTHZ))
    spec = policy.spec
    assert isinstance(spec, security_pb2.AuthorizationPolicy)
    rule = spec.rules[0]
    assert list(getattr(rule, "from")[0].source.principals) == ["cluster.local/ns/prod/sa/frontend"]
    assert list(rule.to[0].operation.methods) == ["GET", "HEAD"]
    assert rule.when[0].key == "request.headers[x-tenant]"
    deny = parse_security_policy(one(AUTHZ.replace("action: ALLOW", "action: DENY")))
    assert deny.spec.action == security_pb2.AuthorizationPolicy.DENY


@pytest.mark.parametrize("old,new,path", [
    ("        notNamespaces: [\"test-*\"]", "        ipBlocks: [\"10.0.0.0/8\"]",
     "spec.rules[0].from[0].source.ipBlocks"),
    ("        notNamespaces: [\"test-*\"]", "        requestPrincipals: [\"*\"]",
     "spec.rules[0].from[0].source.requestPrincipals"),
    ("        ports: [\"8080\"]", "        hosts: [\"api.example.com\"]", "spec.rules[0].to[0].operation.hosts"),
    ("  action: ALLOW", "  action: CUSTOM\n  provider: {name: ext}", "spec.provider"),
    ("  action: ALLOW", "  action: AUDIT", "spec.action"),
    ("  selector: {matchLabels: {app: api}}", "  targetRef: {kind: Gateway, name: gw}", "spec.targetRef"),
])
def test_unsupported_istio_fields_are_refused_by_path(old: str, new: str, path: str) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_security_policy(one(AUTHZ.replace(old, new)), source="authz.yaml")
    assert refused.value.path == path
    assert "not supported by meshbox" in str(refused.value)
    assert str(refused.value).startswith("authz.yaml")


def test_port_level_tls_and_misspelt_fields_are_refused() -> None:
    text = PEER.format(version="v1") + "  portLevelTls: {}\n"
    with pytest.raises(ConfigError, match=r"spec\.portLevelTls: Istio's portLevelTls is not supported"):
        parse_security_policy(one(text))
    with pytest.raises(ConfigError, match=r"spec\.mtls\.mdoe: no such field in MutualTLS"):
        parse_security_policy(one(PEER.format(version="v1").replace("mode: STRICT", "mdoe: STRICT")))
    with pytest.raises(ConfigError, match="expected one of UNSET, DISABLE, PERMISSIVE, STRICT"):
        parse_security_policy(one(PEER.format(version="v1").replace("mode: STRICT", "mode: STRICTEST")))


@pytest.mark.parametrize("old,new,message", [
    ("ports: [\"8080\"]", "ports: [\"http\"]", "expected a port number"),
    ("ports: [\"8080\"]", "ports: [\"70000\"]", "port must be 1..65535"),
    ("paths: [\"/api/*\"]", "paths: [\"/a*b/c\"]", "'*' only at the start or the end"),
    ("paths: [\"/api/*\"]", "paths: [\"api\"]", "a path starts with '/'"),
    ("key: request.headers[x-tenant]", "key: request.auth.claims[iss]", "unsupported condition key"),
    ("      values: [\"acme\"]", "      values: []", "needs values or not_values"),
])
def test_meaningless_authorization_rules_are_refused(old: str, new: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_security_policy(one(AUTHZ.replace(old, new)))


def test_port_level_modes_need_a_selector() -> None:
    text = PEER.format(version="v1").replace("  selector:\n    matchLabels: {app: db}\n", "")
    with pytest.raises(ValidationError, match="only with a workload selector"):
        parse_security_policy(one(text))


def test_wrong_kind_or_group_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"expected apiVersion security\.istio\.io/v1"):
        parse_security_policy(one(AUTHZ.replace("security.istio.io/v1", "security.istio.io/v2")))


def test_spiffe_ids() -> None:
    identity = parse_spiffe_id("spiffe://cluster.local/ns/default/sa/sleep")
    assert identity == WorkloadIdentity("cluster.local", "default", "sleep")
    assert identity.principal == "cluster.local/ns/default/sa/sleep"
    for bad in ("https://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/a", "spiffe://Cluster/ns/a/sa/b",
                "spiffe://cluster.local/ns/A_B/sa/b", "spiffe://cluster.local/sa/b/ns/a"):
        with pytest.raises(IdentityError):
            parse_spiffe_id(bad)


def test_local_tokens() -> None:
    key = local_tokens.new_key()
    claims = local_tokens.TokenClaims("default", "sleep", "sleep-1", 2_000_000_000)
    token = local_tokens.mint(key, claims)
    assert local_tokens.verify(key, token, now=1_900_000_000) == claims
    with pytest.raises(local_tokens.TokenError, match="expired"):
        local_tokens.verify(key, token, now=2_000_000_001)
    with pytest.raises(local_tokens.TokenError, match="signature does not match"):
        local_tokens.verify(local_tokens.new_key(), token, now=0)
    head, _payload, mac = token.split(".")
    other = local_tokens.mint(key, local_tokens.TokenClaims("default", "admin", "x", 2_000_000_000))
    with pytest.raises(local_tokens.TokenError, match="signature does not match"):
        local_tokens.verify(key, f"{head}.{other.split('.')[1]}.{mac}", now=0)
    with pytest.raises(local_tokens.TokenError, match="not a local-cluster token"):
        local_tokens.verify(key, "eyJhbGciOi.x.y", now=0)


def test_mesh_config_trust_domain() -> None:
    assert parse_mesh_config("").trust_domain == "cluster.local"
    assert parse_mesh_config("trustDomain: example.org\n").trust_domain == "example.org"
    assert parse_mesh_config("").ca_address == "meshbox-discovery.meshbox-system.svc:15012"
    with pytest.raises(ValidationError, match="trust_domain: not a trust domain"):
        parse_mesh_config("trustDomain: Example.ORG/x\n")
