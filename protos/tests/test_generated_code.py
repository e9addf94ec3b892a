"""The generated meshbox.api.v1 modules must be exactly what `make proto` produces from protos/."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "protos" / "meshbox" / "api" / "v1"


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_protos.py"), str(tmp_path)], check=True,
                   capture_output=True)
    fresh = sorted(p.name for p in (tmp_path / "meshbox" / "api" / "v1").iterdir())
    committed = sorted(p.name for p in GENERATED.iterdir() if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name)
    assert fresh == committed, "generated file set differs: run `make proto`"
    stale = [n for n in fresh if not filecmp.cmp(tmp_path / "meshbox/api/v1" / n, GENERATED / n, shallow=False)]
    assert not stale, f"stale generated code (run `make proto`): {stale}"


def test_every_proto_has_generated_module() -> None:
    for proto in GENERATED.glob("*.proto"):
        assert (GENERATED / f"{proto.stem}_pb2.py").exists(), proto.name
