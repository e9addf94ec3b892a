"""Turn user-written YAML (or JSON) into config-model messages.

Field names may be written as in the .proto (``outbound_capture``) or in
lowerCamelCase (``outboundCapture``). Every error names the source, the line and
column when known, and the dotted path of the offending field, e.g.::

    mesh.yaml:4:3: ports.admn: no such field in ProxyPorts (known: admin, agent_status, ...)
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError

from meshbox.api.defaults import with_defaults
from meshbox.api.v1 import mesh_config_pb2, proxy_config_pb2, routing_pb2
from meshbox.api.validation import validate_mesh_config, validate_proxy_config, validate_route_rule

M = TypeVar("M", bound=Message)

ROUTE_RULE_API_VERSION = "routing.meshbox.io/v1alpha1"
ROUTE_RULE_KIND = "RouteRule"

_INT_TYPES = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
}
_FLOAT_TYPES = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}
# Well-known types that YAML writes as scalars (JSON mapping of protobuf).
_SCALAR_MESSAGES = {"google.protobuf.Duration", "google.protobuf.Timestamp"}


class ConfigError(ValueError):
    """A config document that does not fit the model; the message says where and why."""

    def __init__(
        self,
        reason: str,
        *,
        source: str = "<input>",
        path: str = "",
        line: int | None = None,
        column: int | None = None,
    ) -> None:
        self.reason = reason
        self.source = source
        self.path = path
        self.line = line
        self.column = column
        where = source
        if line is not None:
            where += f":{line}"
            if column is not None:
                where += f":{column}"
        super().__init__(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")


def _position(node: Any, key: Any = None) -> tuple[int | None, int | None]:
    """1-based line/column of ``node[key]`` (or of ``node``) when ruamel recorded them."""
    lc = getattr(node, "lc", None)
    if lc is None:
        return None, None
    try:
        if key is not None:
            if isinstance(node, list):
                line, col = lc.item(key)
            else:
                line, col = lc.key(key)
        else:
            line, col = lc.line, lc.col
    except (KeyError, IndexError, TypeError):
        return None, None
    return line + 1, col + 1


def type_name(value: Any) -> str:
    """How an error message names the YAML type of ``value`` ('a string', 'an integer', ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


class _Checker:
    """Walks plain YAML data against a message descriptor before protobuf parses it,
    so that errors carry a field path and a line number."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, reason: str, path: str, parent: Any, key: Any) -> ConfigError:
        line, col = _position(parent, key)
        return ConfigError(reason, source=self.source, path=path, line=line, column=col)

    def message(self, data: Any, desc: Any, path: str, parent: Any, key: Any) -> None:
        if desc.full_name in _SCALAR_MESSAGES:
            if not isinstance(data, str):
                raise self.fail(f"expected a duration string such as '1.5s', got {type_name(data)}", path, parent, key)
            return
        if desc.full_name == "google.protobuf.Any":
            return
        if not isinstance(data, Mapping):
            raise self.fail(f"expected a mapping ({desc.name}), got {type_name(data)}", path, parent, key)
        by_name: dict[str, FieldDescriptor] = {}
        for f in desc.fields:
            by_name[f.name] = f
            by_name[f.json_name] = f
        for k, v in data.items():
            sub = f"{path}.{k}" if path else str(k)
            field = by_name.get(k) if isinstance(k, str) else None
            if field is None:
                known = ", ".join(f.name for f in desc.fields)
                raise self.fail(f"no such field in {desc.name} (known: {known})", sub, data, k)
            self.field(v, field, sub, data, k)

    def field(self, value: Any, field: FieldDescriptor, path: str, parent: Any, key: Any) -> None:
        if value is None:
            return
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            if not isinstance(value, Mapping):
                raise self.fail(f"expected a mapping, got {type_name(value)}", path, parent, key)
            value_field = field.message_type.fields_by_name["value"]
            for k, v in value.items():
                self.single(v, value_field, f"{path}.{k}", value, k)
            return
        if field.is_repeated:
            if not isinstance(value, list):
                raise self.fail(f"expected a list, got {type_name(value)}", path, parent, key)
            for i, item in enumerate(value):
                self.single(item, field, f"{path}[{i}]", value, i)
            return
        self.single(value, field, path, parent, key)

    def single(self, value: Any, field: FieldDescriptor, path: str, parent: Any, key: Any) -> None:
        if field.message_type is not None:
            self.message(value, field.message_type, path, parent, key)
        elif field.enum_type is not None:
            names = [v.name for v in field.enum_type.values]
            if isinstance(value, bool) or not (
                (isinstance(value, str) and value in names) or isinstance(value, int)
            ):
                raise self.fail(f"expected one of {', '.join(names)}, got {value!r}", path, parent, key)
        elif field.type in _INT_TYPES:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(f"expected an integer, got {type_name(value)} {value!r}", path, parent, key)
            unsigned = field.type in {FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
                                      FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64}
            if unsigned and value < 0:
                raise self.fail(f"must not be negative, got {value}", path, parent, key)
        elif field.type in _FLOAT_TYPES:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(f"expected a number, got {type_name(value)} {value!r}", path, parent, key)
        elif field.type == FieldDescriptor.TYPE_BOOL:
            if not isinstance(value, bool):
                raise self.fail(f"expected true or false, got {type_name(value)} {value!r}", path, parent, key)
        elif field.type == FieldDescriptor.TYPE_STRING and not isinstance(value, str):
            raise self.fail(
                f"expected a string, got {type_name(value)} {value!r} (quote it in YAML)", path, parent, key
            )


def plain_data(data: Any) -> Any:
    """ruamel's round-trip containers and scalars → plain dicts, lists and builtins.

    What json_format and json.dumps expect, and safe to keep: the result shares no node
    with the parsed document.
    """
    if isinstance(data, Mapping):
        return {str(k): plain_data(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain_data(v) for v in data]
    # ruamel's ScalarInt, ScalarFloat, ScalarString... subclass the builtins: unwrap them.
    for kind in (bool, int, float, str):
        if isinstance(data, kind):
            return kind(data)
    return data


def message_from_data(data: Any, message_type: type[M], *, source: str = "<input>", path: str = "") -> M:
    """Build a ``message_type`` from YAML/JSON data, with errors naming the bad field."""
    if data is None:
        data = {}
    _Checker(source).message(data, message_type.DESCRIPTOR, path, None, None)
    message = message_type()
    try:
        json_format.ParseDict(plain_data(data), message)
    except json_format.ParseError as exc:
        # Only value-level problems get here (e.g. a malformed duration); the checker
        # above already caught unknown fields and wrong types.
        raise ConfigError(str(exc).splitlines()[0], source=source, path=path) from exc
    return message


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    return yaml


def iter_yaml_documents(text: str, *, source: str = "<input>") -> Iterator[Any]:
    """Parse a (multi-document) YAML or JSON stream; broken YAML raises ConfigError with line and column."""
    try:
        yield from _yaml().load_all(io.StringIO(text))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise ConfigError(f"invalid YAML: {exc.problem or exc.context}", source=source, line=line, column=col) from exc


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read file: {exc.strerror}", source=str(path)) from exc


def _single_document(text: str, source: str) -> Any:
    docs = [d for d in iter_yaml_documents(text, source=source) if d is not None]
    if len(docs) > 1:
        raise ConfigError(f"expected one YAML document, found {len(docs)}", source=source)
    return docs[0] if docs else {}


def parse_mesh_config(text: str, *, source: str = "<input>") -> mesh_config_pb2.MeshConfig:
    """Mesh config YAML → a validated MeshConfig with defaults applied."""
    data = _single_document(text, source)
    config = with_defaults(message_from_data(data, mesh_config_pb2.MeshConfig, source=source))
    validate_mesh_config(config, source=source)
    return config


def load_mesh_config(path: str | Path | None) -> mesh_config_pb2.MeshConfig:
    """Read a mesh config file; ``None`` gives the defaults."""
    if path is None:
        return parse_mesh_config("", source="<defaults>")
    return parse_mesh_config(_read(path), source=str(path))


def parse_proxy_config(text: str, *, source: str = "<input>") -> proxy_config_pb2.ProxyConfig:
    """Proxy config YAML (listeners, route_configs, clusters, endpoints) → a validated ProxyConfig."""
    data = _single_document(text, source)
    config = message_from_data(data, proxy_config_pb2.ProxyConfig, source=source)
    validate_proxy_config(config, source=source)
    return config


def load_proxy_config(path: str | Path) -> proxy_config_pb2.ProxyConfig:
    """Read a static proxy config file."""
    return parse_proxy_config(_read(path), source=str(path))


def parse_route_rule(doc: Any, *, source: str = "<input>") -> tuple[str, str, routing_pb2.RouteRuleSpec]:
    """A RouteRule object (apiVersion/kind/metadata/spec) → (name, namespace, validated spec)."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"expected a RouteRule mapping, got {type_name(doc)}", source=source)
    if doc.get("kind") != ROUTE_RULE_KIND or doc.get("apiVersion") != ROUTE_RULE_API_VERSION:
        raise ConfigError(
            f"expected apiVersion {ROUTE_RULE_API_VERSION} kind {ROUTE_RULE_KIND}, "
            f"got {doc.get('apiVersion')!r} {doc.get('kind')!r}",
            source=source,
        )
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ConfigError("metadata.name is required", source=source, path="metadata.name")
    namespace = meta.get("namespace") or "default"
    spec = message_from_data(doc.get("spec"), routing_pb2.RouteRuleSpec, source=source, path="spec")
    validate_route_rule(spec, source=source, path="spec")
    return name, str(namespace), spec
