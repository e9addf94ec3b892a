"""JSON Patch (RFC 6902) that turns one JSON document into another, for the admission webhook.

The webhook runs the injection function on the Pod it receives and sends back the
difference as a patch. Rules the API server holds us to:

- path tokens escape ``~`` as ``~0`` and ``/`` as ``~1`` (RFC 6901), which matters for
  annotation keys such as ``sidecar.meshbox.io/status``;
- ``add`` does not create missing parents, so a map or list that is new is added whole at
  its own path (its parent always exists), never key by key below a path that is missing.

Lists are diffed position by position (the injector appends containers, volumes and env
vars); surplus items are added at their index or removed from the end backwards, so every
index is valid when its operation is applied.
"""

from __future__ import annotations

from typing import Any

JsonValue = Any
PatchOp = dict[str, JsonValue]


def escape_token(token: str) -> str:
    """Escape one reference token of a JSON Pointer (RFC 6901: ``~`` first, then ``/``)."""
    return token.replace("~", "~0").replace("/", "~1")


def _same(a: JsonValue, b: JsonValue) -> bool:
    # Python says True == 1 and 1 == 1.0; JSON documents do not, so compare types too.
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _diff(path: str, old: JsonValue, new: JsonValue, ops: list[PatchOp]) -> None:
    if _same(old, new):
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{path}/{escape_token(key)}"})
        for key, value in new.items():
            child = f"{path}/{escape_token(key)}"
            if key in old:
                _diff(child, old[key], value, ops)
            else:
                ops.append({"op": "add", "path": child, "value": value})
        return
    if isinstance(old, list) and isinstance(new, list):
        common = min(len(old), len(new))
        for i in range(common):
            _diff(f"{path}/{i}", old[i], new[i], ops)
        for i in range(common, len(new)):
            ops.append({"op": "add", "path": f"{path}/{i}", "value": new[i]})
        for i in range(len(old) - 1, common - 1, -1):
            ops.append({"op": "remove", "path": f"{path}/{i}"})
        return
    ops.append({"op": "replace", "path": path, "value": new})


def json_patch(old: JsonValue, new: JsonValue) -> list[PatchOp]:
    """The JSON Patch operations that turn ``old`` into ``new`` (empty when they are equal)."""
    ops: list[PatchOp] = []
    _diff("", old, new, ops)
    return ops
