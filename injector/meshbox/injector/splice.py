"""Write a changed document as line edits of its original text, instead of re-dumping all of it.

Injection copies only the collections it changes and shares everything else (see inject.py), so
comparing the original document with the result by identity finds exactly what changed: keys
added at the end of a mapping, items added, replaced or removed in a sequence, entries removed.
Each becomes an insertion or deletion of whole lines; every other byte of the document stays as
written. Inserted parts are rendered by ruamel.yaml in the document's own layout, and cached:
every pod of a manifest gets the same sidecar, so it is rendered once.

Anything this cannot express as line edits (flow-style collections, anchors, reordered keys)
raises CannotSplice, and the caller re-dumps the document instead.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import Anchor, CommentedMap, CommentedSeq

from meshbox.injector.layout import Layout


class CannotSplice(Exception):
    """The change cannot be written as line edits; re-dump the document."""


class _RenderEntry(CannotSplice):
    """A change that line edits inside the collection cannot express (a flow collection changed in
    the middle, an empty collection gaining or losing its only items): re-render its whole entry."""


@dataclass(frozen=True)
class _Edit:
    start: int  # first line replaced (or the insertion point)
    end: int  # first line kept after it (== start for a pure insertion)
    text: str


def _fingerprint(value: Any) -> Hashable:
    """A hashable stand-in for plain data (types included: they decide quoting); ruamel nodes have none."""
    if isinstance(value, CommentedMap | CommentedSeq):
        raise CannotSplice("ruamel node")
    if isinstance(value, dict):
        return ("d", tuple((k, _fingerprint(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("l", tuple(_fingerprint(v) for v in value))
    return (type(value).__name__, value)


class Renderer:
    """Renders new parts in one layout, remembering what it rendered."""

    def __init__(self, make_yaml: Callable[[], YAML], layout: Layout, newline: str) -> None:
        self.yaml = make_yaml()
        self.yaml.indent(mapping=layout.mapping, sequence=layout.sequence, offset=layout.offset)
        self.newline = newline
        self.cache: dict[Hashable, str] = {}

    def _dump(self, value: Any) -> str:
        try:
            key: Hashable | None = _fingerprint(value)
        except CannotSplice:
            key = None
        if key is not None and key in self.cache:
            return self.cache[key]
        out = io.StringIO()
        self.yaml.dump(value, out)
        text = out.getvalue()
        if key is not None:
            self.cache[key] = text
        return text

    def _at(self, text: str, column: int) -> str:
        lines = text.splitlines()
        lead = len(lines[0]) - len(lines[0].lstrip(" "))
        shift = column - lead
        out = []
        for line in lines:
            if line.strip() and shift > 0:
                line = " " * shift + line
            elif line.strip() and shift < 0:
                line = line[-shift:]
            out.append(line + self.newline)
        return "".join(out)

    def item(self, value: Any, dash_column: int) -> str:
        """``- value`` with its dash at ``dash_column``."""
        return self._at(self._dump([value]), dash_column)

    def flow_entries(self, entries: dict[str, Any]) -> str:
        """``k: v, k2: v2`` as they would appear inside `{...}`."""
        flow = CommentedMap(entries)
        flow.fa.set_flow_style()
        text = self._dump(flow).strip()
        if not (text.startswith("{") and text.endswith("}")) or "\n" in text:
            raise CannotSplice("entries do not fit on one flow line")
        return text[1:-1]

    def entries(self, entries: dict[str, Any], key_column: int) -> str:
        """``key: value`` lines with keys at ``key_column``."""
        return self._at(self._dump(entries), key_column)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _content_end(lines: list[str], start: int, end: int, column: int) -> int:
    """End of an entry's own lines: drop trailing blanks and comments at or left of ``column``,
    which belong to whatever follows."""
    j = end
    while j > start + 1:
        stripped = lines[j - 1].strip()
        if not stripped or (stripped.startswith("#") and _indent(lines[j - 1]) <= column):
            j -= 1
            continue
        break
    return j


def _check_anchor(node: CommentedMap | CommentedSeq) -> None:
    anchor = getattr(node, Anchor.attrib, None)
    if anchor is not None and anchor.value:
        raise CannotSplice("anchored node")


def _check_block(node: CommentedMap | CommentedSeq) -> None:
    if node.fa.flow_style():
        raise _RenderEntry("flow style")
    _check_anchor(node)


def _closing_brace(lines: list[str], line: int, column: int) -> tuple[int, int]:
    """(line, column) of the `}` closing the flow mapping that opens at (line, column)."""
    depth = 0
    quote = ""
    while line < len(lines):
        text = lines[line]
        while column < len(text):
            char = text[column]
            if quote:
                if char == "\\" and quote == '"':
                    column += 1
                elif char == quote:
                    quote = ""
            elif char in "'\"":
                quote = char
            elif char == "#" and (column == 0 or text[column - 1] in " \t"):
                break
            elif char in "{[":
                depth += 1
            elif char in "}]":
                depth -= 1
                if depth == 0:
                    return line, column
            column += 1
        line += 1
        column = 0
    raise CannotSplice("unterminated flow mapping")


def _dash(lines: list[str], seq: CommentedSeq, index: int) -> tuple[int, int]:
    """(line, column) of the `-` of item ``index``."""
    line, col = seq.lc.item(index)
    text = lines[line]
    c = min(col, len(text)) - 1
    while c >= 0 and text[c] == " ":
        c -= 1
    if c >= 0 and text[c] == "-":
        return line, c
    # `-` alone on its line, the item below it.
    prev = line - 1
    while prev >= 0 and not lines[prev].strip():
        prev -= 1
    if prev >= 0 and lines[prev].strip().split("#")[0].strip() == "-":
        return prev, _indent(lines[prev])
    raise CannotSplice("cannot find the item's dash")


class _Differ:
    def __init__(self, lines: list[str], render: Renderer) -> None:
        self.lines = lines
        self.render = render
        self.edits: list[_Edit] = []

    def node(self, old: Any, new: Any, end: int) -> bool:
        """Record edits turning ``old`` into ``new``; False when the caller must re-render the entry."""
        try:
            if isinstance(old, CommentedMap) and type(new) is CommentedMap:
                self.mapping(old, new, end)
                return True
            if isinstance(old, CommentedSeq) and type(new) is CommentedSeq:
                self.sequence(old, new, end)
                return True
        except _RenderEntry:
            return False
        return False

    def mapping(self, old: CommentedMap, new: CommentedMap, end: int) -> None:
        if old.fa.flow_style():
            self.flow_mapping(old, new)
            return
        _check_block(old)
        old_keys = list(old.keys())
        new_keys = list(new.keys())
        if not old_keys or not new_keys:
            raise _RenderEntry("mapping was or becomes empty")
        kept = [k for k in new_keys if k in old]
        if kept != [k for k in old_keys if k in new] or new_keys[: len(kept)] != kept:
            raise CannotSplice("keys reordered")
        try:
            starts = [old.lc.key(k) for k in old_keys]
        except (KeyError, TypeError):
            raise CannotSplice("no position for a key") from None
        column = starts[0][1]
        lines = [s[0] for s in starts]
        for i, key in enumerate(old_keys):
            start = lines[i]
            stop = lines[i + 1] if i + 1 < len(lines) else end
            if key not in new:
                self.edits.append(_Edit(start, _content_end(self.lines, start, stop, column), ""))
            elif new[key] is not old[key] and not self.node(old[key], new[key], stop):
                text = self.render.entries({key: new[key]}, column)
                self.edits.append(_Edit(start, _content_end(self.lines, start, stop, column), text))
        added = {k: new[k] for k in new_keys[len(kept):]}
        if added:
            at = _content_end(self.lines, lines[-1], end, column)
            self.edits.append(_Edit(at, at, self.render.entries(added, column)))

    def flow_mapping(self, old: CommentedMap, new: CommentedMap) -> None:
        """Keys added at, or removed from, the end of a `{...}` mapping: edit just before its `}`."""
        _check_anchor(old)
        old_keys, new_keys = list(old.keys()), list(new.keys())
        shorter, longer = (old, new) if len(old_keys) <= len(new_keys) else (new, old)
        short_keys, long_keys = list(shorter.keys()), list(longer.keys())
        if long_keys[: len(short_keys)] != short_keys or any(new[k] is not old[k] for k in short_keys):
            raise _RenderEntry("flow mapping changed in the middle")
        line, column = _closing_brace(self.lines, old.lc.line, old.lc.col)
        text = self.lines[line]
        body_end = len(text[:column].rstrip())
        tail = {k: longer[k] for k in long_keys[len(short_keys):]}
        rendered = self.render.flow_entries(tail)
        separator = "" if not short_keys or text[body_end - 1] in "{," else ", "
        if longer is new:
            text = text[:body_end] + separator + rendered + text[body_end:]
        else:
            removed = separator + rendered
            if not text[:body_end].endswith(removed):
                raise _RenderEntry("removed entries are not where they were added")
            text = text[: body_end - len(removed)] + text[body_end:]
        self.edits.append(_Edit(line, line + 1, text))

    def sequence(self, old: CommentedSeq, new: CommentedSeq, end: int) -> None:
        _check_block(old)
        if not old or not new:
            raise _RenderEntry("sequence was or becomes empty")
        try:
            dashes = [_dash(self.lines, old, i) for i in range(len(old))]
        except (KeyError, IndexError, TypeError):
            raise CannotSplice("no position for an item") from None
        column = dashes[0][1]
        starts = [d[0] for d in dashes]
        stops = [*starts[1:], end]
        ends = [_content_end(self.lines, s, e, column) for s, e in zip(starts, stops, strict=True)]
        if len(old) == len(new):
            for i, (was, now) in enumerate(zip(old, new, strict=True)):
                if now is not was and not self.node(was, now, stops[i]):
                    self.edits.append(_Edit(starts[i], ends[i], self.render.item(now, column)))
            return
        position = {id(item): i for i, item in enumerate(old)}
        survivors = [position[id(item)] for item in new if id(item) in position]
        if survivors != sorted(survivors):
            raise CannotSplice("items reordered")
        for i in sorted(set(range(len(old))) - set(survivors)):
            self.edits.append(_Edit(starts[i], ends[i], ""))
        previous = -1
        for item in new:
            if id(item) in position:
                previous = position[id(item)]
                continue
            at = ends[previous] if previous >= 0 else starts[0]
            self.edits.append(_Edit(at, at, self.render.item(item, column)))


def splice_document(body: str, old: Any, new: Any, render: Renderer) -> str:
    """``body`` (the text ``old`` was loaded from) edited line by line into ``new``."""
    if not body.endswith("\n"):
        body += render.newline
    lines = body.splitlines(keepends=True)
    differ = _Differ(lines, render)
    if not differ.node(old, new, len(lines)):
        raise CannotSplice("the document changed type or is in flow style")
    out: list[str] = []
    done = 0
    # Stable sort: insertions at one line keep the order they were found in (inner parts first).
    for edit in sorted(differ.edits, key=lambda e: e.start):
        if edit.start < done:
            raise CannotSplice("overlapping edits")
        out.extend(lines[done:edit.start])
        out.append(edit.text)
        done = edit.end
    out.extend(lines[done:])
    return "".join(out)
