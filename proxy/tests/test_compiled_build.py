"""The proxy's per-request modules run compiled (mypyc, see proxy/setup.py and hot_path.py), built from
the sources beside them: a stale build would run old code while the tests read new code."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from meshbox.proxy.hot_path import HOT_PATH, compiled_modules

PROXY_DIST = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(os.environ.get("MESHBOX_PROXY_PURE") == "1",
                                reason="meshbox-proxy was built pure-Python on purpose (MESHBOX_PROXY_PURE=1)")


def test_every_hot_path_module_is_compiled() -> None:
    assert "meshbox.proxy.http_proxy" in HOT_PATH
    missing = sorted(set(HOT_PATH) - set(compiled_modules()))
    assert not missing, f"not compiled: {missing}; run `make venv` (needs gcc and python3-dev)"


def test_compiled_modules_are_no_older_than_their_sources() -> None:
    for name in HOT_PATH:
        compiled = Path(importlib.import_module(name).__file__ or "")
        source = PROXY_DIST / (name.replace(".", "/") + ".py")
        if compiled.parent == source.parent:  # an editable install: the build sits beside the source
            assert compiled.stat().st_mtime >= source.stat().st_mtime, (
                f"{compiled.name} is older than {source.name}: run `make venv` to rebuild the proxy")
