"""The deploy scripts and their Make targets, checked as far as this machine allows.

The kind path (deploy/kind/demo.sh) needs Docker and kind, which CI does not have: it is
shellchecked, its Make target is checked with `make -n`, and its refusal without kind is run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import need

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((REPO / "deploy").rglob("*.sh"))


def test_there_are_scripts_to_check() -> None:
    names = {p.relative_to(REPO).as_posix() for p in SCRIPTS}
    assert {"deploy/kind/demo.sh", "deploy/images/build.sh", "deploy/images/local-base.sh"} <= names
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), f"{script} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_shellcheck_is_clean(script: Path) -> None:
    need(shutil.which("shellcheck") is not None, "needs shellcheck (apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "--severity=style", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def make_dry_run(target: str) -> str:
    result = subprocess.run(["make", "-n", "-C", str(REPO), target], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"make -n {target}: {result.stderr}"
    return result.stdout


def test_make_images_runs_the_build_script() -> None:
    assert "deploy/images/build.sh" in make_dry_run("images")


def test_make_kind_demo_runs_the_kind_script() -> None:
    assert "deploy/kind/demo.sh" in make_dry_run("kind-demo")


def test_demo_refuses_clearly_without_kind(tmp_path: Path) -> None:
    # A PATH with bash and coreutils but without kind: the script must stop before doing anything.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "env"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    result = subprocess.run([str(bin_dir / "bash"), str(REPO / "deploy/kind/demo.sh")], capture_output=True,
                            text=True, env={"PATH": str(bin_dir)}, timeout=30)
    assert result.returncode == 1
    assert "demo.sh: needs docker on PATH" in result.stderr


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--help"], 0, "Usage: deploy/images/build.sh"),
    (["--frobnicate"], 2, "unknown argument --frobnicate"),
    (["--engine"], 1, "--engine needs podman or docker"),
])
def test_build_script_arguments(args: list[str], code: int, message: str) -> None:
    result = subprocess.run([str(REPO / "deploy/images/build.sh"), *args], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == code
    assert message in result.stdout + result.stderr
