"""Findings about traffic manifests, each with a stable code, shared by discovery and `meshctl analyze`.

A finding names the object (``Kind namespace/name``), the field path and why. Errors keep the
object out of the served config; warnings are reported only.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

ERROR = "error"
WARNING = "warning"


class Code(Enum):
    """Stable finding codes (documented in docs/traffic.md); the value is (code, severity)."""

    INVALID = ("MB0100", ERROR)  # does not parse: unknown field, wrong type, bad value
    UNKNOWN_HOST = ("MB0101", ERROR)  # a host no Service or ServiceEntry has
    UNDEFINED_SUBSET = ("MB0102", ERROR)  # a subset no DestinationRule of the host defines
    CONFLICTING_VIRTUAL_SERVICES = ("MB0103", ERROR)  # two VirtualServices for one host
    CONFLICTING_DESTINATION_RULES = ("MB0104", ERROR)  # two DestinationRules for one host
    UNSUPPORTED = ("MB0105", ERROR)  # an Istio field meshbox does not implement
    UNKNOWN_PORT = ("MB0106", ERROR)  # a port the destination does not have, or not an HTTP one
    PORT_NAME = ("MB0107", WARNING)  # a Service port without a protocol name (proxied at L4)
    SELECTS_NOTHING = ("MB0108", WARNING)  # a selector or subset that matches no workload
    OVERLAPPING_RULES = ("MB0109", WARNING)  # a RouteRule and a VirtualService for one host
    UNUSED_POLICY = ("MB0110", WARNING)  # a DestinationRule whose host is unknown
    INVALID_MESH_CONFIG = ("MB0111", ERROR)  # the mesh config does not load
    CONFLICTING_HOSTS = ("MB0112", ERROR)  # a ServiceEntry for a host a Service or another entry has
    NOT_CAPTURED = ("MB0113", WARNING)  # routes for an address:port the mesh config does not capture

    @property
    def id(self) -> str:
        return self.value[0]

    @property
    def severity(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class Finding:
    """One problem: its code, where it is (source file or API, object, field path) and why."""

    code: Code
    source: str
    resource: str  # "VirtualService default/reviews"
    path: str  # "spec.http[0].mirror"; "" for the object as a whole
    message: str

    @property
    def severity(self) -> str:
        return self.code.severity

    def __str__(self) -> str:
        where = f"{self.resource}: {self.path}" if self.path else self.resource
        return f"{self.source}: {where}: {self.message} [{self.code.id}]"

    def line(self) -> str:
        """One line for `meshctl analyze`: severity, code, object, field, message, source."""
        where = f"{self.resource} {self.path}" if self.path else self.resource
        return f"{self.severity.capitalize()} [{self.code.id}] {where}: {self.message} ({self.source})"


def has_errors(findings: list[Finding]) -> bool:
    return any(f.severity == ERROR for f in findings)
