"""Registry source (1): a directory of Kubernetes-shaped YAML, polled for changes.

Polling (path, mtime, size) every interval is portable and cheap for the tens of files a
registry directory holds. A file that stops parsing keeps serving what it last held, and
the problem is reported, so a half-saved edit never empties the mesh.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshbox.api.loader import ConfigError, iter_yaml_documents, plain_data
from meshbox.discovery.registry import Registry, SourcedDocument, build_registry

log = logging.getLogger("meshbox.discovery")
SUFFIXES = (".yaml", ".yml", ".json")
Fingerprint = dict[str, tuple[int, int]]


class RegistryDirError(OSError):
    """The registry directory itself is unusable (missing, not a directory, unreadable)."""


def _json_documents(text: str, source: str) -> list[Any]:
    try:
        return [json.loads(text)]
    except json.JSONDecodeError as exc:
        raise ConfigError(f"invalid JSON: {exc.msg}", source=source, line=exc.lineno, column=exc.colno) from None


def parse_file(text: str, source: str) -> list[SourcedDocument]:
    """All objects of one YAML file (a ``kind: List`` is unpacked); raises ConfigError if it does not parse.

    A ``.json`` file is read by the json module: the same objects, many times faster than YAML.
    """
    docs: list[SourcedDocument] = []
    documents = _json_documents(text, source) if source.endswith(".json") else iter_yaml_documents(text, source=source)
    for index, doc in enumerate(documents):
        if doc is None:
            continue
        if not isinstance(doc, Mapping):
            raise ConfigError(f"document {index + 1} is not a mapping", source=source)
        plain = plain_data(doc)
        assert isinstance(plain, dict)
        items = plain.get("items") if plain.get("kind") == "List" else [plain]
        docs.extend(SourcedDocument(source, item) for item in items or [] if isinstance(item, Mapping))
    return docs


def _constant(registry: Registry) -> Callable[[], Registry]:
    return lambda: registry


@dataclass
class DirectorySource:
    """Reads every YAML/JSON file under ``root`` (recursively, sorted) into a Registry."""

    root: Path
    _fingerprint: Fingerprint = field(default_factory=dict)
    _last_good: dict[str, list[SourcedDocument]] = field(default_factory=dict)
    _registry: Registry | None = None
    _unchanged: set[str] = field(default_factory=set)

    def fingerprint(self) -> Fingerprint:
        if not self.root.is_dir():
            raise RegistryDirError(f"registry directory {self.root} does not exist or is not a directory")
        prints = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and not path.name.startswith("."):
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue  # removed while scanning; the next poll sees it gone
                prints[str(path)] = (stat.st_mtime_ns, stat.st_size)
        return prints

    def load(self) -> Registry:
        """Read the directory now; files whose mtime and size did not change are not parsed again."""
        earlier = self._fingerprint
        self._fingerprint = self.fingerprint()
        documents: list[SourcedDocument] = []
        file_errors: list[str] = []
        good: dict[str, list[SourcedDocument]] = {}
        failed: set[str] = set()
        for name in self._fingerprint:
            if earlier.get(name) == self._fingerprint[name] and name in self._unchanged:
                good[name] = self._last_good[name]
                documents.extend(good[name])
                continue
            try:
                good[name] = parse_file(Path(name).read_text(encoding="utf-8"), name)
            except (ConfigError, OSError, UnicodeDecodeError) as exc:
                failed.add(name)
                if name in self._last_good:
                    good[name] = self._last_good[name]
                    file_errors.append(f"{exc}; still serving the file's previous content")
                else:
                    file_errors.append(str(exc))
            documents.extend(good.get(name, []))
        # Files that parsed now; one that failed keeps its last good content but is read again next time.
        self._unchanged = {n for n in good if n not in failed}
        self._last_good = good
        registry = build_registry(documents, self._registry)
        self._registry = registry
        return dataclasses.replace(registry, errors=(*file_errors, *registry.errors))

    def changed(self) -> bool:
        return self.fingerprint() != self._fingerprint

    async def watch(self, on_change: Callable[[Callable[[], Registry]], None], *, interval: float = 0.5) -> None:
        """Poll forever; after each change on disk, hand ``on_change`` the freshly read registry."""
        missing = False
        while True:
            await asyncio.sleep(interval)
            try:
                if self.changed():
                    on_change(_constant(self.load()))
                missing = False
            except OSError as exc:
                # Gone (e.g. replaced by a rename) or unreadable: keep serving the last registry, look again.
                if not missing:
                    log.warning("%s; still serving its last content", exc)
                missing = True
