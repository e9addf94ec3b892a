"""Golden tests: every manifest under golden/ injected with its folder's settings.

Each input ``X.yaml`` (or ``X.json``) has ``X.golden.yaml`` (the expected output, byte for byte)
and ``X.report`` (the expected stderr report). A folder's ``_mesh.yaml`` / ``_template.yaml`` are
the mesh config and sidecar template its inputs are injected with. After a deliberate change,
regenerate with ``MESHBOX_UPDATE_GOLDEN=1 .venv/bin/pytest injector/tests/test_golden.py`` and
review the diff.

Besides the expected output, every case checks the promises that hold for any manifest:
injecting the output again changes nothing, uninject undoes exactly what inject did, and
uninject of an un-injected manifest is the manifest itself.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from meshbox.api.loader import load_mesh_config
from meshbox.injector.inject import InjectSettings
from meshbox.injector.manifest import ManifestResult, inject_manifest, uninject_manifest
from meshbox.injector.settings import load_template
from meshbox.injector.workloads import WORKLOAD_KINDS

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("MESHBOX_UPDATE_GOLDEN") == "1"


def _inputs() -> list[Path]:
    return sorted(
        p for p in GOLDEN.rglob("*")
        if p.suffix in (".yaml", ".json") and ".golden." not in p.name and not p.name.startswith("_")
    )


def _settings(folder: Path) -> InjectSettings:
    mesh = folder / "_mesh.yaml"
    template = folder / "_template.yaml"
    overrides = {"template": load_template(template)} if template.exists() else {}
    return InjectSettings.from_mesh_config(load_mesh_config(mesh if mesh.exists() else None), **overrides)


def _check(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"no golden file {path.name}: run with MESHBOX_UPDATE_GOLDEN=1 and review it"
    assert actual == path.read_text(encoding="utf-8"), f"{path} differs (MESHBOX_UPDATE_GOLDEN=1 to regenerate)"


def _report(result: ManifestResult) -> str:
    return "".join(f"{line}\n" for line in result.reports)


@pytest.mark.parametrize("source", _inputs(), ids=lambda p: str(p.relative_to(GOLDEN)))
def test_golden(source: Path) -> None:
    text = source.read_text(encoding="utf-8")
    settings = _settings(source.parent)
    result = inject_manifest(text, settings, source=source.name)
    _check(source.with_name(f"{source.stem}.golden{source.suffix}"), result.text)
    _check(source.with_name(f"{source.stem}.report"), _report(result))

    again = inject_manifest(result.text, settings, source=source.name)
    assert again.text == result.text, "injecting the output again must give byte-identical output"
    assert not again.changed

    undone = uninject_manifest(result.text, source=source.name)
    assert undone.text == uninject_manifest(text, source=source.name).text
    if source.parent.name != "reinject":
        assert undone.text == text, "uninject(inject(x)) must be x byte for byte"


def test_every_workload_kind_has_a_golden_case() -> None:
    kinds_text = "\n".join(p.read_text() for p in (GOLDEN / "kinds").glob("*") if ".golden." not in p.name)
    for kind in WORKLOAD_KINDS:
        assert f"kind: {kind}\n" in kinds_text or f'"kind": "{kind}"' in kinds_text, kind



def test_no_golden_file_without_its_input() -> None:
    stems = {(p.parent, p.stem) for p in _inputs()}
    for path in GOLDEN.rglob("*"):
        if path.suffix == ".report" or ".golden." in path.name:
            assert (path.parent, path.name.split(".")[0]) in stems, f"{path} has no input: delete it"
