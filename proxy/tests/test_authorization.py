"""Authorization of inbound traffic: the decision matrix (a pure function, compiled from the real
AuthorizationPolicy messages). The proxy enforcing it between two real processes is in test_mutual_tls."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import security_pb2
from meshbox.proxy.authorization import Request
from meshbox.proxy.authorization_compiler import compile_authorization

SLEEP = "cluster.local/ns/default/sa/sleep"
OTHER = "cluster.local/ns/prod/sa/other"


def policy(name: str, spec: dict[str, Any]) -> pc.NamedAuthorizationPolicy:
    return pc.NamedAuthorizationPolicy(name=name, namespace="default",
                                       spec=json_format.ParseDict(spec, security_pb2.AuthorizationPolicy()))


ALLOW_SLEEP = policy("allow-sleep", {"action": "ALLOW", "rules": [{"from": [{"source": {"principals": [SLEEP]}}]}]})
DENY_ADMIN = policy("deny-admin", {"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]})
ALLOW_GET_HEADER = policy("get-with-header", {"action": "ALLOW", "rules": [{
    "to": [{"operation": {"methods": ["GET"], "ports": ["8080"]}}],
    "when": [{"key": "request.headers[x-team]", "values": ["blue", "green*"]}]}]})


def http(principal: str, path: str = "/", method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
         port: int = 8080) -> Request:
    namespace = principal.split("/")[2] if principal else ""
    return Request(principal, namespace, port, method, path, headers or [])


def tcp(principal: str, port: int = 8080) -> Request:
    return Request(principal, principal.split("/")[2] if principal else "", port)


def test_no_policy_allows_all_and_compiles_to_nothing() -> None:
    assert compile_authorization([]) is None


def test_allow_by_principal() -> None:
    authz = compile_authorization([ALLOW_SLEEP])
    assert authz is not None
    assert authz.check(http(SLEEP)) is None
    assert authz.check(http(OTHER)) == "no rule of the ALLOW policies (default/allow-sleep) matches"
    assert authz.check(http("")) is not None  # plaintext: no principal


def test_deny_by_path_and_deny_wins_over_allow() -> None:
    authz = compile_authorization([ALLOW_SLEEP, DENY_ADMIN])
    assert authz is not None
    assert authz.check(http(SLEEP, "/admin/users?x=1")) == "denied by DENY policy default/deny-admin rules[0]"
    assert authz.check(http(SLEEP, "/public")) is None
    assert authz.check(http(OTHER, "/public")) is not None
    only_deny = compile_authorization([DENY_ADMIN])
    assert only_deny is not None and only_deny.check(http("", "/public")) is None


def test_methods_ports_and_header_conditions() -> None:
    authz = compile_authorization([ALLOW_GET_HEADER])
    assert authz is not None
    assert authz.check(http(SLEEP, headers=[(b"x-team", b"blue")])) is None
    assert authz.check(http(SLEEP, headers=[(b"X-Team", b"greenish")])) is None
    assert authz.check(http(SLEEP, headers=[(b"x-team", b"red")])) is not None
    assert authz.check(http(SLEEP, method="POST", headers=[(b"x-team", b"blue")])) is not None
    assert authz.check(http(SLEEP, port=9090, headers=[(b"x-team", b"blue")])) is not None


def test_tcp_ignores_http_only_allow_rules_and_applies_deny_rules_broader() -> None:
    allow_http = compile_authorization([ALLOW_GET_HEADER])
    assert allow_http is not None and allow_http.check(tcp(SLEEP)) is not None  # the ALLOW rule needs HTTP
    deny = compile_authorization([DENY_ADMIN])
    assert deny is not None and deny.check(tcp(SLEEP)) is not None  # DENY without its HTTP part denies more
    allow = compile_authorization([ALLOW_SLEEP])
    assert allow is not None and allow.check(tcp(SLEEP)) is None and allow.check(tcp(OTHER)) is not None


def test_not_values_and_empty_allow_policy() -> None:
    not_prod = compile_authorization([policy("not-prod", {"action": "ALLOW", "rules": [
        {"from": [{"source": {"notNamespaces": ["prod"]}}]}]})])
    assert not_prod is not None
    assert not_prod.check(http(SLEEP)) is None and not_prod.check(http(OTHER)) is not None
    deny_all = compile_authorization([policy("deny-all", {"action": "ALLOW"})])
    assert deny_all is not None and deny_all.check(http(SLEEP)) is not None
