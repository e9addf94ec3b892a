"""meshctl's own commands, run as the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

MESHCTL = str(Path(sys.executable).parent / "meshctl")


def test_help_lists_commands() -> None:
    out = subprocess.run([MESHCTL, "--help"], check=True, capture_output=True, text=True).stdout
    assert "Commands:" in out
    assert "version" in out


def test_version_names_every_component() -> None:
    out = subprocess.run([MESHCTL, "version"], check=True, capture_output=True, text=True).stdout
    for dist in ("meshbox-api", "meshbox-init", "meshbox-injector", "meshbox-proxy", "meshbox-agent",
                 "meshbox-discovery", "meshbox-cluster", "meshbox-ctl"):
        assert f"{dist} " in out
    assert "not installed" not in out
