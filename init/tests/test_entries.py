"""The legacy backend's fast entry encoder builds exactly the entries python-iptables' Rule API builds.

Real libxtables and libiptc in a network namespace made by the test (the Rule API reads the
nat table to resolve jump targets). ``compare_entries.py`` does the comparison, one IP family
per process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

COMPARE = str(Path(__file__).resolve().parent / "compare_entries.py")


@pytest.mark.parametrize("family", ["4", "6"])
def test_encoded_entries_equal_the_rule_api_ones(netns: Any, family: str) -> None:
    """Every rule of three plans (default, split with every list flag, -b '*' with -d): same bytes."""
    ns = netns(f"entries{family}")
    result = json.loads(ns.run(sys.executable, COMPARE, family).stdout)
    assert result["compared"] > 40
    assert result["differing"] == []
