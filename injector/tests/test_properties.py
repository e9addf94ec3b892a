"""Properties over generated pods: purity, idempotency and exact undo, for objects and for YAML text."""

from __future__ import annotations

import copy
import io
from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from meshbox.injector.inject import InjectSettings, inject, uninject
from meshbox.injector.manifest import inject_manifest, uninject_manifest

SETTINGS = InjectSettings()
names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True).filter(lambda n: n not in ("init", "proxy"))
values = st.one_of(st.text(max_size=12), st.integers(-5, 70000), st.booleans(), st.none(),
                   st.sampled_from(["yes", "on", "off", "15001", "1e3", "~", "a: b", "- x", "#c"]))
annotation_values = st.one_of(st.text(max_size=12), st.sampled_from(["yes", "on", "true", "0"]))
containers = st.lists(
    st.fixed_dictionaries({"name": names, "image": st.text(min_size=1, max_size=10)},
                          optional={"env": st.lists(st.fixed_dictionaries({"name": names, "value": values}),
                                                    max_size=3)}),
    min_size=1, max_size=3, unique_by=lambda c: c["name"],
)


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": draw(names)}
    if draw(st.booleans()):
        metadata["labels"] = draw(st.dictionaries(names, names, max_size=3))
    if draw(st.booleans()):
        metadata["annotations"] = draw(st.one_of(
            st.none(), st.dictionaries(st.sampled_from(["team", "note", "a.b/c"]), annotation_values, max_size=3)))
    spec: dict[str, Any] = {"containers": draw(containers)}
    if draw(st.booleans()):
        taken = {c["name"] for c in spec["containers"]}
        spec["initContainers"] = [c for c in draw(containers) if c["name"] not in taken] or None
    if draw(st.booleans()):
        spec["restartPolicy"] = draw(st.sampled_from(["Always", "Never"]))
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@settings(max_examples=150, deadline=None)
@given(pods())
def test_inject_is_pure_idempotent_and_undone_exactly(pod: dict[str, Any]) -> None:
    before = copy.deepcopy(pod)
    result = inject(pod, SETTINGS)
    assert pod == before
    assert result.changed
    assert inject(result.obj, SETTINGS).obj is result.obj
    assert uninject(result.obj).obj == pod


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pods(), st.sampled_from([(2, 2, 0), (2, 4, 2), (4, 4, 0), (4, 6, 4)]), st.booleans(), st.booleans())
def test_yaml_text_round_trips_byte_for_byte(pod: dict[str, Any], layout: tuple[int, int, int],
                                             explicit: bool, flow_leaves: bool) -> None:
    """Block style, or flow style for the innermost collections (`{a: b}`, `[x]`), in four layouts."""
    yaml = YAML()
    yaml.indent(mapping=layout[0], sequence=layout[1], offset=layout[2])
    yaml.explicit_start = explicit
    yaml.default_flow_style = None if flow_leaves else False
    out = io.StringIO()
    yaml.dump(pod, out)
    text = "# generated\n" + out.getvalue() + "# after\n"
    # ruamel itself does not read back every string it writes (e.g. '\x85' in single quotes
    # reloads as a space); such a text does not mean `pod`, so it says nothing about injection.
    assume(YAML(typ="safe").load(text) == pod)
    injected = inject_manifest(text, SETTINGS).text
    assert injected != text
    assert inject_manifest(injected, SETTINGS).text == injected
    assert uninject_manifest(injected).text == text
