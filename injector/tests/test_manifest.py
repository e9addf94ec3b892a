"""Manifest streams: document cutting, byte-for-byte pass-through, layouts, JSON, and stream errors."""

from __future__ import annotations

import pytest

from meshbox.injector.inject import InjectSettings
from meshbox.injector.layout import Layout, detect_layout
from meshbox.injector.manifest import ManifestError, inject_manifest, split_documents, uninject_manifest

SETTINGS = InjectSettings()
POD = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: a\n    image: a\n"


def test_documents_are_cut_at_markers_with_their_trailing_comments() -> None:
    text = "# head\n---\na: 1\n\n# about b\n---  # b\nb: 2\n...\n%YAML 1.2\n---\nc: 3\n"
    chunks = list(split_documents(text))
    assert [c.text for c in chunks] == ["# head\n", "---\na: 1\n\n# about b\n", "---  # b\nb: 2\n...\n",
                                       "%YAML 1.2\n---\nc: 3\n"]
    assert [c.tail for c in chunks] == ["# head\n", "\n# about b\n", "", ""]
    assert [c.explicit for c in chunks] == [False, True, True, True]
    assert "".join(c.text for c in chunks) == text


def test_a_marker_inside_a_block_scalar_is_not_a_marker_unless_at_column_0() -> None:
    text = "a: |\n  ---\n  x\n---\nb: 1\n"
    assert [c.text for c in split_documents(text)] == ["a: |\n  ---\n  x\n", "---\nb: 1\n"]


def test_keep_chomping_blank_lines_stay_in_the_value() -> None:
    text = POD + "  annotations:\n    note: |+\n      kept\n\n"
    text = text.replace("spec:\n  containers:\n  - name: a\n    image: a\n  annotations:", "  annotations:")
    text += "spec:\n  containers:\n  - name: a\n    image: a\n"
    out = inject_manifest(text, SETTINGS).text
    assert uninject_manifest(out).text == text


def test_untouched_documents_are_copied_byte_for_byte() -> None:
    odd = "apiVersion:   v1\nkind: ConfigMap\nmetadata: { name: odd }\ndata:\n  k:     'v'   # spaced\n"
    text = odd + "---\n" + POD
    out = inject_manifest(text, SETTINGS).text
    assert out.startswith(odd + "---\n")


def test_section_comments_between_documents_stay_between_them() -> None:
    text = POD + "\n# ---- services ----\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: s\n"
    out = inject_manifest(text, SETTINGS).text
    assert "  - name: proxy" in out
    assert "\n\n# ---- services ----\n---\napiVersion: v1\nkind: Service" in out
    assert out.index("- name: proxy") < out.index("# ---- services")


@pytest.mark.parametrize(("text", "layout"), [
    ("a:\n  b:\n  - x\n", Layout(2, 2, 0)),
    ("a:\n  b:\n    - x\n", Layout(2, 4, 2)),
    ("a:\n    b:\n        - x\n", Layout(4, 6, 4)),
    ("spec:\n  containers:\n  - name: a\n    ports:\n    - containerPort: 1\n", Layout(2, 2, 0)),
    ("- a:\n    - x\n", Layout(2, 4, 2)),
    ("plain: scalar\n", Layout(2, 2, 0)),
])
def test_layout_detection(text: str, layout: Layout) -> None:
    assert detect_layout(text) == layout


def test_json_input_gives_json_output_with_the_same_indent() -> None:
    text = '{\n    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},\n' \
           '    "spec": {"containers": [{"name": "a", "image": "a"}]}\n}\n'
    out = inject_manifest(text, SETTINGS)
    assert out.text.startswith('{\n    "apiVersion": "v1",\n    "kind": "Pod",')
    assert out.reports == ['pod "p" injected']
    again = inject_manifest(out.text, SETTINGS)
    assert again.text == out.text and not again.changed
    service = '{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}'
    assert inject_manifest(service, SETTINGS).text == service


def test_a_yaml_flow_mapping_is_not_mistaken_for_json() -> None:
    text = "{apiVersion: v1, kind: Service, metadata: {name: s}}\n"
    result = inject_manifest(text, SETTINGS)
    assert result.text == text
    assert result.reports == ['service "s" skipped']


@pytest.mark.parametrize(("text", "expected"), [
    ('{"kind": "Pod",\n "spec": [}\n', "m.yaml:2:11: invalid JSON: Expecting value"),
    ("a: 1\n---\nb: [1,\n", "m.yaml:4:1: invalid YAML: expected the node content"),
    ("a: 1\na: 2\n", 'm.yaml:2:1: invalid YAML: found duplicate key "a"'),
    ("a: 1\n---\nkey: value\n  bad: indent\n", "m.yaml:4:6: invalid YAML: mapping values are not allowed here"),
    ("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: d\nspec: {}\n",
     'm.yaml:1: document 1: deployment "d": spec.template is missing'),
])
def test_stream_errors_name_file_line_and_column(text: str, expected: str) -> None:
    with pytest.raises(ManifestError) as info:
        inject_manifest(text, SETTINGS, source="m.yaml")
    assert str(info.value).startswith(expected)


def test_error_in_a_later_document_names_its_line_and_number() -> None:
    text = POD + "---\n" + POD.replace("  - name: a\n    image: a\n", "  - name: proxy\n    image: mine\n")
    with pytest.raises(ManifestError) as info:
        inject_manifest(text, SETTINGS, source="m.yaml")
    assert str(info.value).startswith(f'm.yaml:{POD.count(chr(10)) + 1}: document 2: pod "p": a container named')


def test_empty_input_is_empty_output() -> None:
    for text in ("", "\n", "# only a comment\n"):
        result = inject_manifest(text, SETTINGS)
        assert result.text == text and result.reports == []


def test_stream_reports_warn_with_the_document_number() -> None:
    result = inject_manifest("---\n---\nfoo: bar\n", SETTINGS, source="m.yaml")
    assert result.reports == [
        "warning: m.yaml: document 1: empty document, passed through",
        "warning: m.yaml: document 2: document without kind, passed through",
    ]


def test_changed_documents_are_edited_not_re_dumped() -> None:
    """Odd spacing that a ruamel dump would normalise survives injection and uninjection."""
    text = POD.replace("kind: Pod", "kind:     Pod   # spaced").replace("name: p", "name:   'p'")
    out = inject_manifest(text, SETTINGS).text
    assert out.startswith("apiVersion: v1\nkind:     Pod   # spaced\nmetadata:\n  name:   'p'\n")
    assert uninject_manifest(out).text == text


def test_flow_style_parts_round_trip() -> None:
    text = ("apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: {}}\n"
            "spec:\n  containers: [{name: a, image: a}]\n")
    out = inject_manifest(text, SETTINGS).text
    assert "metadata: {name: p, annotations: {prometheus.io/scrape: \"true\", " in out
    assert uninject_manifest(out).text == text
    assert inject_manifest(out, SETTINGS).text == out


def test_crlf_documents_stay_crlf() -> None:
    text = POD.replace("\n", "\r\n")
    out = inject_manifest(text, SETTINGS).text
    assert "\n" not in out.replace("\r\n", "")
    assert uninject_manifest(out).text == text


def test_anchored_templates_fall_back_to_a_full_dump_that_is_still_valid() -> None:
    text = POD.replace("spec:\n", "spec: &pod\n")
    out = inject_manifest(text, SETTINGS).text
    assert "- name: proxy" in out
    assert inject_manifest(out, SETTINGS).text == out


def test_flow_mapping_end_is_found_past_quoted_braces_and_line_breaks() -> None:
    text = ("apiVersion: v1\nkind: Pod\nmetadata: { name: p,\n  labels: {a: \"}\", b: '{'} }  # c }\n"
            "spec:\n  containers:\n  - name: a\n    image: a\n")
    out = inject_manifest(text, SETTINGS).text
    assert "  labels: {a: \"}\", b: '{'}, annotations: {prometheus.io/scrape: \"true\", " in out
    assert out.split("\n")[3].endswith("} }  # c }")
    assert uninject_manifest(out).text == text


def test_crlf_streams_are_cut_at_their_markers() -> None:
    text = (POD + "---\n" + POD.replace("name: p", "name: q")).replace("\n", "\r\n")
    result = inject_manifest(text, SETTINGS)
    assert result.reports == ['pod "p" injected', 'pod "q" injected']
    assert uninject_manifest(result.text).text == text


def test_tab_indented_json_keeps_its_tabs() -> None:
    text = '{\n\t"apiVersion": "v1",\n\t"kind": "Pod",\n\t"metadata": {"name": "p"},\n' \
           '\t"spec": {"containers": [{"name": "a", "image": "a"}]}\n}\n'
    out = inject_manifest(text, SETTINGS).text
    assert out.startswith('{\n\t"apiVersion": "v1",\n\t"kind": "Pod",\n\t"metadata": {\n\t\t"name": "p",')
