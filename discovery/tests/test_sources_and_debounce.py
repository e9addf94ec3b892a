"""The registry directory source (real files) and the debouncer (real event loop timing, bounded)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from meshbox.discovery.debounce import Debouncer, fire_at
from meshbox.discovery.directory_source import DirectorySource, RegistryDirError


def test_fire_at_waits_for_quiet_but_not_past_max_wait() -> None:
    assert fire_at(first=0.0, last=0.3, quiet=0.1, max_wait=1.0) == pytest.approx(0.4)
    assert fire_at(first=0.0, last=0.95, quiet=0.1, max_wait=1.0) == pytest.approx(1.0)


def test_debouncer_coalesces_a_burst_and_runs_again_for_the_next() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        debouncer = Debouncer(lambda: fired.append(loop.time()), quiet=0.05, max_wait=0.5)
        start = loop.time()
        for _ in range(10):
            debouncer.trigger()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert len(fired) == 1 and fired[0] - start >= 0.1
        debouncer.trigger()
        await asyncio.sleep(0.2)
        await debouncer.close()
        return fired

    assert len(asyncio.run(scenario())) == 2


def test_debouncer_max_wait_bounds_a_never_ending_burst() -> None:
    async def scenario() -> int:
        fired: list[int] = []
        debouncer = Debouncer(lambda: fired.append(1), quiet=0.05, max_wait=0.15)
        for _ in range(40):  # 0.4 s of changes every 10 ms: never 50 ms of quiet
            debouncer.trigger()
            await asyncio.sleep(0.01)
        await debouncer.close()
        return len(fired)

    assert asyncio.run(scenario()) >= 2


def test_directory_reads_lists_nested_files_and_skips_other_kinds(kit: Any, tmp_path: Path) -> None:
    (tmp_path / "apps").mkdir()
    kit.write_yaml(tmp_path / "apps" / "svc.yaml", [{"kind": "List", "apiVersion": "v1",
                                                    "items": kit.tutorial_objects()[:2]}])
    kit.write_yaml(tmp_path / "deploy.yml", [{"apiVersion": "apps/v1", "kind": "Deployment",
                                              "metadata": {"name": "x"}}])
    (tmp_path / "notes.txt").write_text("not yaml: [")
    registry = DirectorySource(tmp_path).load()
    assert [s.name for s in registry.services] == ["service-one", "service-two"]
    assert registry.errors == ()


def test_directory_change_detection_and_broken_file(kit: Any, registry_dir: Path) -> None:
    source = DirectorySource(registry_dir)
    assert len(source.load().pods) == 3
    assert not source.changed()
    mesh = registry_dir / "mesh.yaml"
    original = mesh.read_text()
    mesh.write_text(original + "  broken: [\n")
    os.utime(mesh, ns=(1, 1))
    assert source.changed()
    registry = source.load()
    assert len(registry.pods) == 3, "a file that stops parsing keeps serving its previous content"
    assert "mesh.yaml" in registry.errors[0] and "still serving" in registry.errors[0]
    (registry_dir / "new.yaml").write_text("kind: [\n")
    registry = source.load()
    assert any("new.yaml" in e and "invalid YAML" in e for e in registry.errors)
    mesh.unlink()
    assert source.load().pods == ()


def test_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RegistryDirError, match="does not exist or is not a directory"):
        DirectorySource(tmp_path / "missing").load()


def test_json_files_and_unchanged_files_are_not_parsed_again(kit: Any, registry_dir: Path) -> None:
    rules = registry_dir / "rules.json"
    rules.write_text(json.dumps({"apiVersion": "v1", "kind": "List",
                                 "items": [kit.route_rule("split", "service-two", {"v1": 50, "v2": 50})]}))
    source = DirectorySource(registry_dir)
    first = source.load()
    assert first.errors == () and len(first.route_rules) == 1
    services = source._last_good[str(registry_dir / "mesh.yaml")]

    rules.write_text('{"apiVersion": "v1",\n  "kind": List}')
    second = source.load()
    assert second.errors == (f"{rules}:2:11: invalid JSON: Expecting value; still serving the file's previous "
                             "content",)
    assert len(second.route_rules) == 1
    assert source._last_good[str(registry_dir / "mesh.yaml")] is services  # not parsed again

    rules.write_text(json.dumps(kit.route_rule("all-v2", "service-two", {"v2": 100})))
    third = source.load()
    assert third.errors == () and [r.name for r in third.route_rules] == ["all-v2"]
