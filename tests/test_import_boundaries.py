"""Components depend on the shared model, never on each other.

Every module of a component may import `meshbox.api` and its own package only; meshctl
(meshbox.ctl) may also import the injector, whose pure injection function it fronts, and the
local cluster (meshbox.cluster), whose front end it is. The local cluster starts discovery,
the agent, the proxy and init as processes; it never imports them.
The check reads the import statements of every file, so a lazy import inside a
function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPONENTS = ("init", "injector", "proxy", "agent", "discovery", "cluster", "ctl")
EXTRA_ALLOWED = {"ctl": {"injector", "cluster"}}


def meshbox_imports(path: Path) -> set[str]:
    """The second-level meshbox packages (`api`, `proxy`, ...) a file imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "meshbox":
                names = [f"meshbox.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "meshbox" and len(parts) > 1:
                found.add(parts[1])
    return found


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_imports_only_the_model_and_itself(component: str) -> None:
    allowed = {"api", component} | EXTRA_ALLOWED.get(component, set())
    package = REPO / component / "meshbox" / component
    files = sorted(package.rglob("*.py"))
    assert files, f"no sources under {package}"
    offenders = {
        str(f.relative_to(REPO)): sorted(meshbox_imports(f) - allowed)
        for f in files
        if meshbox_imports(f) - allowed
    }
    assert not offenders, f"{component} imports other components: {offenders}"


def test_the_model_imports_no_component() -> None:
    for f in (REPO / "protos" / "meshbox" / "api").rglob("*.py"):
        assert meshbox_imports(f) <= {"api"}, f


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    sample = tmp_path / "x.py"
    sample.write_text("def f():\n    from meshbox.proxy import server\n    import meshbox.api.v1\n")
    assert meshbox_imports(sample) == {"proxy", "api"}


def test_no_generic_top_level_names_installed() -> None:
    """The distributions install only under the meshbox namespace (no top-level `init`, `proxy`, `agent`)."""
    for dist_dir in ("protos", *COMPONENTS):
        top = {p.name for p in (REPO / dist_dir).iterdir() if p.is_dir() and (p / "__init__.py").exists()}
        assert not top, f"{dist_dir}/ has top-level packages {top}"
        assert not (REPO / dist_dir / "meshbox" / "__init__.py").exists(), "meshbox must stay a namespace package"
