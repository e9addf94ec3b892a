"""Importing python-iptables through meshbox's importer: no setuptools, no warnings, environment untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from meshbox.init.iptc_import import extensions_dir

REPORT = """
import json, os, sys
before = dict(os.environ)
from meshbox.init.iptc_import import import_iptc
iptc = import_iptc()
print(json.dumps({"libdir": iptc.xtables._xtables_libdir, "env_unchanged": dict(os.environ) == before,
                  "loaded": sorted(m for m in ("distutils", "setuptools") if m in sys.modules),
                  "table": iptc.Table.__name__}))
"""


def _import_report(**env: str) -> tuple[dict[str, object], str]:
    done = subprocess.run([sys.executable, "-W", "error", "-c", REPORT], capture_output=True, text=True,
                          check=True, env={**os.environ, **env}, timeout=60)
    return json.loads(done.stdout), done.stderr


def test_import_loads_no_setuptools_prints_nothing_and_restores_the_environment() -> None:
    report, stderr = _import_report()
    assert stderr == ""
    assert report["loaded"] == []
    assert report["env_unchanged"] is True
    assert report["table"] == "Table"
    assert any(Path(str(report["libdir"])).glob("libxt_*.so"))


def test_a_callers_xtables_libdir_wins(tmp_path: Path) -> None:
    report, _ = _import_report(XTABLES_LIBDIR=str(tmp_path))
    assert report["libdir"] == str(tmp_path)


def test_extensions_dir_is_the_xtables_dir_next_to_libxtables(tmp_path: Path) -> None:
    only_dir, only_lib, both = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    (only_dir / "xtables").mkdir(parents=True)
    only_lib.mkdir()
    (only_lib / "libxtables.so.12").touch()
    (both / "xtables").mkdir(parents=True)
    (both / "libxtables.so.12").touch()
    assert extensions_dir([only_dir, only_lib, both]) == both / "xtables"
    assert extensions_dir([only_dir, only_lib]) is None
