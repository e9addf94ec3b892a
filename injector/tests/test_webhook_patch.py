"""JSON Patch generation: RFC 6901 escaping, parents created first, and patch(a, b) applied to a is b."""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
from hypothesis import given, settings
from hypothesis import strategies as st

from meshbox.injector.webhook_patch import escape_token, json_patch


def strict_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: True is not 1, 1 is not 1.0."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def test_escape_token_escapes_tilde_before_slash() -> None:
    assert escape_token("sidecar.meshbox.io/status") == "sidecar.meshbox.io~1status"
    assert escape_token("a~b") == "a~0b"
    # "~1" literally in a key must survive as "~01", not turn into "/".
    assert escape_token("~1") == "~01"
    assert escape_token("plain") == "plain"


def test_equal_documents_give_an_empty_patch() -> None:
    doc = {"a": [1, {"b": None}], "c": "x"}
    assert json_patch(doc, copy.deepcopy(doc)) == []


def test_missing_annotations_map_is_added_whole_at_an_existing_parent() -> None:
    old: dict[str, Any] = {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "app"}]}}
    new = copy.deepcopy(old)
    new["metadata"]["annotations"] = {"sidecar.meshbox.io/status": "{}"}
    new["spec"]["initContainers"] = [{"name": "init"}]
    new["spec"]["containers"].append({"name": "proxy"})
    assert json_patch(old, new) == [
        {"op": "add", "path": "/metadata/annotations", "value": {"sidecar.meshbox.io/status": "{}"}},
        {"op": "add", "path": "/spec/containers/1", "value": {"name": "proxy"}},
        {"op": "add", "path": "/spec/initContainers", "value": [{"name": "init"}]},
    ]


def test_existing_annotations_get_an_escaped_key() -> None:
    old = {"metadata": {"annotations": {"a": "1"}}}
    new = {"metadata": {"annotations": {"a": "1", "x.io/y~z": "2"}}}
    assert json_patch(old, new) == [{"op": "add", "path": "/metadata/annotations/x.io~1y~0z", "value": "2"}]
    assert jsonpatch.apply_patch(old, json_patch(old, new)) == new


def test_type_changes_are_replaced_not_merged() -> None:
    assert json_patch({"a": 1}, {"a": True}) == [{"op": "replace", "path": "/a", "value": True}]
    assert json_patch({"a": 1}, {"a": 1.0}) == [{"op": "replace", "path": "/a", "value": 1.0}]
    assert json_patch({"a": {"b": 1}}, {"a": [1]}) == [{"op": "replace", "path": "/a", "value": [1]}]


def test_shrinking_lists_remove_from_the_end_backwards() -> None:
    old = {"l": [1, 2, 3, 4]}
    new = {"l": [1, 9]}
    ops = json_patch(old, new)
    assert ops == [
        {"op": "replace", "path": "/l/1", "value": 9},
        {"op": "remove", "path": "/l/3"},
        {"op": "remove", "path": "/l/2"},
    ]
    assert jsonpatch.apply_patch(old, ops) == new


_keys = st.text(alphabet="ab~/.-1", min_size=0, max_size=4)
_scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.floats(-2, 2, allow_nan=False) | st.text(max_size=3)
_json = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json, _json)
def test_applying_the_patch_gives_the_new_document(old: Any, new: Any) -> None:
    # jsonpatch refuses an `add` below a missing parent, as the API server does, so this also
    # checks that every path's parent exists when its operation runs.
    patched = jsonpatch.apply_patch({"root": old}, _rooted(json_patch(old, new)))
    assert strict_equal(patched["root"], new)


def _rooted(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Wrap in {"root": ...} so a whole-document replace ("" path) is applied the same way.
    return [{**op, "path": "/root" + op["path"]} for op in ops]
