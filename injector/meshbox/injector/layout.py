"""Guess how a YAML document is indented, so a re-dumped document keeps its author's layout.

ruamel.yaml dumps with one indentation for the whole document; we give it the one the input uses
(mapping indent, and where the `-` of block sequences sits relative to the parent key).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# `key:` alone on its line (a block collection follows), optionally after `- ` item dashes.
_OPENER = re.compile(
    r"""^(?P<dashes>(?:-\s+)*)"""  # `- ` of enclosing sequence items
    r"""(?:"[^"]*"|'[^']*'|[^\s#'"{\[&*!|>%@`-][^#]*?|-[^\s#][^#]*?)"""  # the key: quoted or plain
    r""":\s*(?:#.*)?$"""  # the colon, then nothing but an optional comment
)


@dataclass(frozen=True)
class Layout:
    """ruamel's indent(mapping=..., sequence=..., offset=...)."""

    mapping: int = 2
    sequence: int = 2
    offset: int = 0


def detect_layout(text: str) -> Layout:
    """The first mapping indent and sequence-dash offset seen under a `key:` line (defaults 2/0)."""
    mapping: int | None = None
    offset: int | None = None
    opener: int | None = None
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(stripped)
        if opener is not None:
            if stripped.startswith("- ") or stripped == "-":
                if offset is None and indent >= opener:
                    offset = indent - opener
            elif mapping is None and indent > opener:
                mapping = indent - opener
            if mapping is not None and offset is not None:
                break
        match = _OPENER.match(stripped)
        if match:
            dashes = match.group("dashes")
            opener = indent + len(dashes)
        else:
            opener = None
    mapping = mapping or 2
    offset = offset or 0
    return Layout(mapping=mapping, sequence=max(mapping, offset + 2), offset=offset)
