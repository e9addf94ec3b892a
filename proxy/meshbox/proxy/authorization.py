"""Authorization of inbound traffic: Istio's AuthorizationPolicy semantics as a pure function.

A policy set is compiled (by config_compiler, from the listener's ``authorization_policies``) into plain
tuples, so it pickles into the snapshot and the serving process never loads protobuf. The decision:

1. a DENY policy with a matching rule denies;
2. otherwise, when there is no ALLOW policy, the request is allowed;
3. otherwise it is allowed only if an ALLOW policy has a matching rule.

A rule matches when one of its sources, one of its operations and every condition match (an absent
part matches anything). Strings match exactly, by prefix (``abc*``), suffix (``*abc``) or presence
(``*``). At L4 (TCP) there are no method, path or headers: as in Istio, an ALLOW rule that needs them
matches nothing, and a DENY rule is applied without them (it denies more, never less).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

ALLOW = "ALLOW"
DENY = "DENY"

# (values, not_values): the attribute must match one of values (when any) and none of not_values.
Match = tuple[tuple[str, ...], tuple[str, ...]]


def string_matches(pattern: str, value: str) -> bool:
    """One Istio match string against a value ("" is an absent value: only not-matches accept it)."""
    if pattern == "*":
        return value != ""
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    return value == pattern


def _any(patterns: tuple[str, ...], value: str) -> bool:
    return any(string_matches(p, value) for p in patterns)


def _attribute(match: Match, value: str) -> bool:
    values, not_values = match
    if values and not _any(values, value):
        return False
    return not _any(not_values, value)


@dataclass(frozen=True)
class Request:
    """What a decision looks at. ``method``/``path``/``headers`` are None at L4."""

    principal: str  # the peer's principal (SPIFFE ID without scheme), "" without mutual TLS
    namespace: str  # the peer's namespace, "" without mutual TLS
    port: int
    method: str | None = None
    path: str | None = None
    headers: Sequence[tuple[bytes, bytes]] | None = None


@dataclass(frozen=True)
class Operation:
    ports: Match
    methods: Match
    paths: Match

    @property
    def http_only(self) -> bool:
        return any(self.methods) or any(self.paths)

    def matches(self, req: Request, l4: bool) -> bool:
        if not _attribute(self.ports, str(req.port)):
            return False
        if l4:
            return True
        path = (req.path or "").split("?", 1)[0]
        return _attribute(self.methods, req.method or "") and _attribute(self.paths, path)


@dataclass(frozen=True)
class Condition:
    key: str
    match: Match

    @property
    def http_only(self) -> bool:
        return self.key.startswith("request.headers[")

    def matches(self, req: Request, l4: bool) -> bool:
        key = self.key
        if key.startswith("request.headers["):
            if l4:
                return True
            name = key[len("request.headers["):-1].lower().encode()
            found = [v.decode("latin-1") for n, v in (req.headers or ()) if n.lower() == name]
            values, not_values = self.match
            if values and not any(_any(values, v) for v in found):
                return False
            return not any(_any(not_values, v) for v in found)
        if key == "source.principal":
            return _attribute(self.match, req.principal)
        if key == "source.namespace":
            return _attribute(self.match, req.namespace)
        return _attribute(self.match, str(req.port))  # destination.port (validation allows no other key)


@dataclass(frozen=True)
class Source:
    principals: Match
    namespaces: Match

    def matches(self, req: Request) -> bool:
        return _attribute(self.principals, req.principal) and _attribute(self.namespaces, req.namespace)


@dataclass(frozen=True)
class Rule:
    sources: tuple[Source, ...]
    operations: tuple[Operation, ...]
    conditions: tuple[Condition, ...]

    @property
    def http_only(self) -> bool:
        return any(op.http_only for op in self.operations) or any(c.http_only for c in self.conditions)

    def matches(self, req: Request, l4: bool) -> bool:
        if self.sources and not any(s.matches(req) for s in self.sources):
            return False
        if self.operations and not any(op.matches(req, l4) for op in self.operations):
            return False
        return all(c.matches(req, l4) for c in self.conditions)


@dataclass(frozen=True)
class Policy:
    name: str  # "<namespace>/<name>", for log lines
    action: str
    rules: tuple[Rule, ...]

    def matching_rule(self, req: Request, l4: bool) -> int | None:
        """Index of the first rule matching ``req``, or None."""
        for i, rule in enumerate(self.rules):
            if l4 and self.action == ALLOW and rule.http_only:
                continue
            if rule.matches(req, l4):
                return i
        return None


@dataclass(frozen=True)
class Authorizer:
    """The policies of one inbound listener. :meth:`check` returns None (allowed) or why it is denied."""

    policies: tuple[Policy, ...]

    def check(self, req: Request) -> str | None:
        l4 = req.method is None
        allows = False
        for policy in self.policies:
            if policy.action == DENY:
                rule = policy.matching_rule(req, l4)
                if rule is not None:
                    return f"denied by DENY policy {policy.name} rules[{rule}]"
            else:
                allows = True
        if not allows:
            return None
        for policy in self.policies:
            if policy.action == ALLOW and policy.matching_rule(req, l4) is not None:
                return None
        names = ", ".join(p.name for p in self.policies if p.action == ALLOW)
        return f"no rule of the ALLOW policies ({names}) matches"
