"""Whole manifests (YAML streams or JSON) through inject/uninject, keeping everything else as written.

The stream is cut at its document markers; each document is parsed on its own. A document the
injector leaves alone is copied to the output byte for byte; only changed documents are dumped
(ruamel round-trip, with the document's own indentation, quotes and comments). Comment and blank
lines that trail a document stay where they were, after the document.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from meshbox.injector.inject import Injection, InjectionError, InjectSettings, Report, inject, uninject
from meshbox.injector.layout import Layout, detect_layout
from meshbox.injector.splice import CannotSplice, Renderer, splice_document

_MARKER = re.compile(r"---(?:[ \t\r\n]|$)")
_DIRECTIVE = "%"
# A block scalar that keeps its trailing newlines (`|+`, `>2+`): its blank lines are content.
_KEEP_CHOMP = re.compile(r"[|>][1-9]?\+")


class ManifestError(ValueError):
    """A manifest that cannot be processed: broken YAML/JSON (with line and column) or a bad resource."""


@dataclass
class ManifestResult:
    """The output text and the per-resource report lines (for stderr)."""

    text: str
    reports: list[str] = field(default_factory=list)
    changed: bool = False


@dataclass
class _Chunk:
    """One document's text: its body (from its `---` line, if any) and trailing comment lines."""

    line: int  # 0-based line of the chunk in the stream
    body: str
    tail: str
    explicit: bool

    @property
    def text(self) -> str:
        return self.body + self.tail


def _split_tail(lines: list[str]) -> tuple[list[str], list[str]]:
    """Trailing blank lines and column-0 comments, which ruamel would glue to the last value."""
    cut = len(lines)
    while cut > 0 and (not lines[cut - 1].strip() or lines[cut - 1].startswith("#")):
        cut -= 1
    return lines[:cut], lines[cut:]


def split_documents(text: str) -> Iterator[_Chunk]:
    """Cut a YAML stream before each `---` line (directives before it go with it)."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for i, line in enumerate(lines):
        if i and _MARKER.match(line):
            start = i
            while start - 1 > starts[-1] and lines[start - 1].startswith(_DIRECTIVE):
                start -= 1
            starts.append(start)
    starts.append(len(lines))
    for begin, end in itertools.pairwise(starts):
        chunk = lines[begin:end]
        if _KEEP_CHOMP.search("".join(chunk)):
            body, tail = chunk, list[str]()
        else:
            body, tail = _split_tail(chunk)
        first = next((ln for ln in body if not ln.startswith(_DIRECTIVE)), "")
        explicit = bool(_MARKER.match(first))
        yield _Chunk(line=begin, body="".join(body), tail="".join(tail), explicit=explicit)


class _Yaml:
    """ruamel instances: one loader, one dumper per (layout, explicit start), one renderer per layout."""

    def __init__(self) -> None:
        self.loader = self._make()
        self.dumpers: dict[tuple[Layout, bool], YAML] = {}
        self.renderers: dict[tuple[Layout, str], Renderer] = {}

    @staticmethod
    def _make() -> YAML:
        yaml = YAML(typ="rt")
        yaml.preserve_quotes = True
        yaml.allow_duplicate_keys = False
        # Never re-fold long lines (annotations, commands): only injected parts may differ.
        yaml.width = 1 << 16
        return yaml

    def dump(self, doc: Any, layout: Layout, explicit: bool) -> str:
        dumper = self.dumpers.get((layout, explicit))
        if dumper is None:
            dumper = self._make()
            dumper.indent(mapping=layout.mapping, sequence=layout.sequence, offset=layout.offset)
            dumper.explicit_start = explicit
            self.dumpers[(layout, explicit)] = dumper
        out = io.StringIO()
        dumper.dump(doc, out)
        return out.getvalue()

    def write(self, chunk: _Chunk, old: Any, new: Any) -> str:
        """The changed document's text: line edits of the original where possible, else a re-dump."""
        layout = detect_layout(chunk.body)
        if not _KEEP_CHOMP.search(chunk.body):
            newline = "\r\n" if chunk.body.endswith("\r\n") else "\n"
            renderer = self.renderers.get((layout, newline))
            if renderer is None:
                renderer = self.renderers[(layout, newline)] = Renderer(self._make, layout, newline)
            try:
                return splice_document(chunk.body, old, new, renderer)
            except CannotSplice:
                pass
        return self.dump(new, layout, chunk.explicit)


def _yaml_error(exc: YAMLError, source: str, line_offset: int) -> ManifestError:
    if isinstance(exc, MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is not None:
            return ManifestError(f"{source}:{mark.line + line_offset + 1}:{mark.column + 1}: invalid YAML: {problem}")
        return ManifestError(f"{source}: invalid YAML: {problem}")
    return ManifestError(f"{source}: invalid YAML: {exc}")


def _note(report: Report, source: str, number: int) -> str:
    if report.action == "warning" and not report.kind:
        return f"warning: {source}: document {number}: {report.reason}"
    return report.line()


def _looks_like_json(text: str) -> bool:
    return text.lstrip()[:1] in ("{", "[")


def _json_indent(text: str) -> str | None:
    """The input's indent unit (spaces or a tab); None for single-line JSON."""
    match = re.search(r"\n([ \t]+)\S", text)
    return match.group(1) if match else None


def _transform_json(obj: Any, text: str, fn: Callable[[Any], Injection], source: str) -> ManifestResult:
    """JSON in, JSON out (indented as the input was)."""
    try:
        result = fn(obj)
    except InjectionError as exc:
        raise ManifestError(f"{source}: {exc}") from None
    reports = [_note(r, source, 1) for r in result.reports]
    if not result.changed:
        return ManifestResult(text=text, reports=reports)
    out = json.dumps(result.obj, indent=_json_indent(text), ensure_ascii=False) + "\n"
    return ManifestResult(text=out, reports=reports, changed=True)


def transform_manifest(text: str, fn: Callable[[Any], Injection], *, source: str = "<stdin>") -> ManifestResult:
    """Run ``fn`` (inject or uninject of one object) over every document of a manifest."""
    json_error: json.JSONDecodeError | None = None
    if _looks_like_json(text):
        try:
            return _transform_json(json.loads(text), text, fn, source)
        except json.JSONDecodeError as exc:
            # Maybe YAML in flow style after all; if YAML fails too, the JSON error is the useful one.
            json_error = exc
    yaml = _Yaml()
    out: list[str] = []
    reports: list[str] = []
    changed = False
    number = 0
    for chunk in split_documents(text):
        try:
            doc = yaml.loader.load(chunk.body)
        except YAMLError as exc:
            if json_error is not None:
                raise ManifestError(
                    f"{source}:{json_error.lineno}:{json_error.colno}: invalid JSON: {json_error.msg}"
                ) from None
            raise _yaml_error(exc, source, chunk.line) from None
        if doc is None and not chunk.explicit:
            # Comments or blank lines before the first `---`: not a document.
            out.append(chunk.text)
            continue
        number += 1
        try:
            result = fn(doc)
        except InjectionError as exc:
            raise ManifestError(f"{source}:{chunk.line + 1}: document {number}: {exc}") from None
        reports.extend(_note(r, source, number) for r in result.reports)
        if not result.changed:
            out.append(chunk.text)
            continue
        changed = True
        out.append(yaml.write(chunk, doc, result.obj) + chunk.tail)
    return ManifestResult(text="".join(out), reports=reports, changed=changed)


def inject_manifest(text: str, settings: InjectSettings, *, source: str = "<stdin>") -> ManifestResult:
    """Inject every workload of a manifest (see meshbox.injector.inject.inject)."""
    return transform_manifest(text, lambda obj: inject(obj, settings), source=source)


def uninject_manifest(text: str, *, source: str = "<stdin>") -> ManifestResult:
    """Remove meshbox's sidecar from every workload of a manifest."""
    return transform_manifest(text, uninject, source=source)
