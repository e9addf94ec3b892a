"""Reading Istio objects (plain dicts) field by field, recording a Finding for each problem.

Istio's YAML uses lowerCamelCase field names; the proto names (snake_case) are accepted too.
Every field is one of: implemented (read by the translator), refused (a known Istio field that
meshbox does not implement: an UNSUPPORTED finding naming it), or unknown (an INVALID finding).
Nothing is silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from google.protobuf.duration_pb2 import Duration

from meshbox.api.istio.findings import Code, Finding
from meshbox.api.loader import type_name

PROXY_TODO = "not implemented by meshbox's proxy yet"
MESH_TODO = "not implemented by meshbox yet"

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|m|s|us|µs|ns)")
_UNIT_NANOS = {"h": 3600 * 10**9, "m": 60 * 10**9, "s": 10**9, "ms": 10**6, "us": 10**3, "µs": 10**3, "ns": 1}


def camel(name: str) -> str:
    """snake_case → lowerCamelCase (Istio's JSON field names)."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def parse_duration(text: str) -> Duration | None:
    """A Go/Istio duration ('2s', '0.5s', '1m30s', '500ms') → Duration; None if malformed."""
    pos, nanos = 0, 0
    for m in _DURATION_PART.finditer(text):
        if m.start() != pos:
            return None
        nanos += round(float(m.group(1)) * _UNIT_NANOS[m.group(2)])
        pos = m.end()
    if pos != len(text) or not text:
        return None
    return Duration(seconds=nanos // 10**9, nanos=nanos % 10**9)



class Reader:
    """Collects findings about one object while its translator walks it."""

    def __init__(self, source: str, resource: str) -> None:
        self.source = source
        self.resource = resource
        self.findings: list[Finding] = []

    def report(self, code: Code, path: str, message: str) -> None:
        finding = Finding(code, self.source, self.resource, path, message)
        if finding not in self.findings:
            self.findings.append(finding)

    def invalid(self, path: str, message: str) -> None:
        self.report(Code.INVALID, path, message)

    def refuse(self, path: str, why: str = PROXY_TODO) -> None:
        self.report(Code.UNSUPPORTED, path, why)

    def fields(self, data: Any, path: str, message: str, implemented: Iterable[str],
               refused: Mapping[str, str]) -> dict[str, Any]:
        """The implemented fields of a mapping (camelCase keys); refused and unknown fields are reported."""
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            self.invalid(path, f"expected a mapping ({message}), got {type_name(data)}")
            return {}
        implemented = set(implemented)
        result = {}
        for key, value in data.items():
            name = camel(str(key))
            sub = f"{path}.{key}" if path else str(key)
            if name in implemented:
                result[name] = value
            elif name in refused:
                if value not in (None, [], {}):
                    self.refuse(sub, refused[name])
            else:
                known = ", ".join(sorted(implemented | set(refused)))
                self.invalid(sub, f"not a field of Istio's {message} (known: {known})")
        return result

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.invalid(path, f"expected a mapping, got {type_name(value)}")
            return {}
        return value

    def items(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.invalid(path, f"expected a list, got {type_name(value)}")
            return []
        return value

    def string(self, value: Any, path: str, *, required: bool = False) -> str:
        if value is None or value == "":
            if required:
                self.invalid(path, "is required")
            return ""
        if not isinstance(value, str):
            self.invalid(path, f"expected a string, got {type_name(value)} {value!r}")
            return ""
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        return [s for i, v in enumerate(self.items(value, path)) if (s := self.string(v, f"{path}[{i}]"))]

    def labels(self, value: Any, path: str) -> dict[str, str]:
        result = {}
        for key, val in self.mapping(value, path).items():
            if isinstance(val, str):
                result[str(key)] = val
            else:
                self.invalid(f"{path}.{key}", f"label values must be strings, got {val!r} (quote it in YAML)")
        return result

    def integer(self, value: Any, path: str, *, low: int, high: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.invalid(path, f"expected an integer {low}..{high}, got {value!r}")
            return None
        return value

    def number(self, value: Any, path: str, *, low: float, high: float) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.invalid(path, f"expected a number {low:g}..{high:g}, got {value!r}")
            return None
        return float(value)

    def duration(self, value: Any, path: str) -> Duration | None:
        if not isinstance(value, str) or (d := parse_duration(value)) is None:
            self.invalid(path, f"expected a duration such as '2s' or '500ms', got {value!r}")
            return None
        return d
