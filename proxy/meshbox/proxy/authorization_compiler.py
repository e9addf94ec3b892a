"""AuthorizationPolicy messages → the plain policies of ``authorization`` (run where protobuf is loaded:
the config-compiling child)."""

from __future__ import annotations

from collections.abc import Iterable

from meshbox.api.v1 import proxy_config_pb2 as pc
from meshbox.api.v1 import security_pb2
from meshbox.proxy.authorization import ALLOW, DENY, Authorizer, Condition, Match, Operation, Policy, Rule, Source


def _match(values: Iterable[str], not_values: Iterable[str]) -> Match:
    return (tuple(values), tuple(not_values))


def _rule(rule: security_pb2.Rule) -> Rule:
    sources = tuple(Source(_match(f.source.principals, f.source.not_principals),
                           _match(f.source.namespaces, f.source.not_namespaces)) for f in getattr(rule, "from"))
    operations = tuple(Operation(_match(t.operation.ports, t.operation.not_ports),
                                 _match(t.operation.methods, t.operation.not_methods),
                                 _match(t.operation.paths, t.operation.not_paths)) for t in rule.to)
    conditions = tuple(Condition(c.key, _match(c.values, c.not_values)) for c in rule.when)
    return Rule(sources, operations, conditions)


def compile_authorization(policies: Iterable[pc.NamedAuthorizationPolicy]) -> Authorizer | None:
    """The listener's policies, or None when it has none (allow all, nothing to check)."""
    compiled = tuple(
        Policy(f"{p.namespace}/{p.name}", DENY if p.spec.action == security_pb2.AuthorizationPolicy.DENY else ALLOW,
               tuple(_rule(r) for r in p.spec.rules))
        for p in policies)
    return Authorizer(compiled) if compiled else None
