"""What kube-inject writes into the containers is what the other components accept.

The injector may not import the init, agent or proxy packages, so this runs their installed
commands, as the containers would: every distinct init argument list in the golden outputs goes
through `meshbox-init --dry-run` (it only prints the rule plan), and every option the proxy
container passes must be one the agent (or, after `--`, the proxy) documents.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

BIN = Path(sys.executable).parent
GOLDEN = Path(__file__).parent / "golden"


def _containers(data: Any, key: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    if isinstance(data, dict):
        for k, v in data.items():
            if k == key and isinstance(v, list):
                found.extend(c for c in v if isinstance(c, dict))
            else:
                found.extend(_containers(v, key))
    elif isinstance(data, list):
        for v in data:
            found.extend(_containers(v, key))
    return found


def _injected(key: str, name: str) -> list[list[str]]:
    yaml = YAML(typ="safe")
    args: set[tuple[str, ...]] = set()
    for path in GOLDEN.rglob("*.golden.*"):
        for doc in yaml.load_all(path.read_text()):
            args.update(tuple(c["args"]) for c in _containers(doc, key) if c.get("name") == name)
    assert args, f"no injected {name} container in the golden files"
    return [list(a) for a in sorted(args)]


def test_every_injected_init_command_line_is_accepted_by_meshbox_init() -> None:
    for args in _injected("initContainers", "init"):
        run = subprocess.run([str(BIN / "meshbox-init"), "--dry-run", *args], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, f"meshbox-init {' '.join(args)}: {run.stderr}"
        assert "MESHBOX_OUTPUT" in run.stdout


def test_every_proxy_container_option_is_one_the_agent_and_proxy_know() -> None:
    agent_help = subprocess.run([str(BIN / "meshbox-agent"), "sidecar", "--help"], capture_output=True,
                                text=True, timeout=60, check=True).stdout
    proxy_help = subprocess.run([str(BIN / "meshbox-proxy"), "--help"], capture_output=True, text=True,
                                timeout=60, check=True).stdout
    for args in _injected("containers", "proxy"):
        assert args[0] == "sidecar"
        own, _, extra = " ".join(args[1:]).partition(" -- ")
        for word in own.split():
            if word.startswith("--"):
                assert word in agent_help, f"meshbox-agent sidecar has no {word}"
        for word in extra.split():
            if word.startswith("--"):
                assert word in proxy_help, f"meshbox-proxy has no {word}"
