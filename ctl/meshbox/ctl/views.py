"""How `meshctl local get` prints objects: kubectl-shaped tables, YAML/JSON and a JSONPath subset (pure)."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ruamel.yaml import YAML

from meshbox.cluster.objects import Obj

_JSONPATH_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\*|-?\d+)\]")
_JSONPATH_EXPR = re.compile(r"\{([^}]*)\}")


class OutputError(ValueError):
    """An output format or JSONPath expression that cannot be used."""


def age(created: str | None, now: datetime | None = None) -> str:
    """kubectl's AGE: 42s, 5m, 3h, 2d."""
    if not created:
        return "<unknown>"
    then = datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    seconds = max(int(((now or datetime.now(UTC)) - then).total_seconds()), 0)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 3 * 3600:
        return f"{seconds // 60}m"
    if seconds < 48 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell with three spaces between, as kubectl prints them."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["   ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines) + "\n"


def service_ports(service: Obj) -> str:
    """PORT(S) column: 80/TCP,8080/TCP."""
    return ",".join(f"{p['port']}/{p.get('protocol', 'TCP')}" for p in service["spec"]["ports"])


def endpoints_column(obj: Obj) -> str:
    """ENDPOINTS column of `get endpoints`: ready ip:port pairs, ``<none>`` when there are none."""
    pairs = []
    if obj.get("kind") == "EndpointSlice":
        ports = [p["port"] for p in obj.get("ports") or []]
        pairs = [f"{ip}:{port}" for e in obj.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
                 for ip in e["addresses"] for port in ports]
    else:
        pairs = [f"{a['ip']}:{p['port']}" for s in obj.get("subsets") or [] for a in s.get("addresses") or []
                 for p in s["ports"]]
    if not pairs:
        return "<none>"
    return ",".join(pairs[:3]) + (f" + {len(pairs) - 3} more..." if len(pairs) > 3 else "")


def as_list(items: list[Obj]) -> Obj:
    """A kubectl List object around items."""
    return {"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}}


def to_yaml(obj: Any) -> str:
    """Block-style YAML, keys in their order."""
    yaml = YAML(typ="rt")
    yaml.default_flow_style = False
    yaml.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    yaml.dump(obj, buf)
    return buf.getvalue()


def _walk(value: Any, path: str, expr: str) -> list[Any]:
    values = [value]
    pos = 0
    while pos < len(path):
        step = _JSONPATH_STEP.match(path, pos)
        if step is None:
            raise OutputError(f"jsonpath {expr!r}: cannot parse at {path[pos:]!r} "
                              "(supported: .field, [index], [*])")
        pos = step.end()
        found: list[Any] = []
        for v in values:
            if step.group(1) is not None:
                if isinstance(v, dict) and step.group(1) in v:
                    found.append(v[step.group(1)])
            elif isinstance(v, list):
                if step.group(2) == "*":
                    found.extend(v)
                else:
                    index = int(step.group(2))
                    if -len(v) <= index < len(v):
                        found.append(v[index])
        values = found
    return values


def jsonpath(obj: Any, template: str) -> str:
    """kubectl's -o jsonpath for the common subset: ``{.items[0].metadata.name}``, ``{"\\n"}`` and plain text."""
    out: list[str] = []
    pos = 0
    for match in _JSONPATH_EXPR.finditer(template):
        out.append(template[pos:match.start()])
        path = match.group(1).strip()
        if len(path) >= 2 and path[0] == path[-1] == '"':
            out.append(path[1:-1].replace("\\n", "\n").replace("\\t", "\t"))
            pos = match.end()
            continue
        if not path.startswith(".") and not path.startswith("["):
            path = "." + path if path else ""
        values = _walk(obj, path, template)
        if not values and path:
            raise OutputError(f"jsonpath {template!r}: {match.group(1)} is not found")
        out.append(" ".join(v if isinstance(v, str) else json.dumps(v) for v in values))
        pos = match.end()
    out.append(template[pos:])
    return "".join(out)


def render(obj: Obj, output: str) -> str:
    """An object (or List) as yaml, json or jsonpath=TEMPLATE."""
    if output == "yaml":
        return to_yaml(obj)
    if output == "json":
        return json.dumps(obj, indent=4) + "\n"
    if output.startswith("jsonpath="):
        return jsonpath(obj, output.split("=", 1)[1])
    raise OutputError(f"output format {output!r} is not supported (use wide, yaml, json or jsonpath=...)")
