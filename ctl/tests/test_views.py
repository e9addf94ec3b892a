"""How `meshctl local get` prints objects: tables, ages and the JSONPath subset (pure)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from meshbox.ctl.views import OutputError, age, endpoints_column, jsonpath, table


def test_views() -> None:
    obj = {"items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]}
    assert jsonpath(obj, "{.items[0].metadata.name}") == "a"
    assert jsonpath(obj, "{.items[*].metadata.name}") == "a b"
    assert jsonpath(obj, "name={.items[-1].metadata.name}\n") == "name=b\n"
    assert jsonpath(obj, '{.items[0].metadata.name}{"\\n"}{.items[1].metadata}') == 'a\n{"name": "b"}'
    with pytest.raises(OutputError, match="not found"):
        jsonpath(obj, "{.items[5].metadata.name}")
    with pytest.raises(OutputError, match="cannot parse"):
        jsonpath(obj, "{.items[?(@.x)]}")
    assert table(["NAME", "READY"], [["pod-a", "2/2"]]) == "NAME    READY\npod-a   2/2\n"
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert age("2026-01-01T11:59:15Z", now) == "45s"
    assert age("2026-01-01T11:50:00Z", now) == "10m"
    assert age("2025-12-25T12:00:00Z", now) == "7d"


def test_endpoints_column_lists_ready_addresses_only() -> None:
    endpoints = {"kind": "Endpoints", "subsets": [
        {"ports": [{"name": "http", "port": 8080}], "addresses": [{"ip": "10.244.0.2"}, {"ip": "10.244.0.3"}],
         "notReadyAddresses": [{"ip": "10.244.0.4"}]}]}
    assert endpoints_column(endpoints) == "10.244.0.2:8080,10.244.0.3:8080"
    assert endpoints_column({"kind": "Endpoints", "subsets": []}) == "<none>"
    many = {"kind": "EndpointSlice", "ports": [{"port": 80}],
            "endpoints": [{"addresses": [f"10.0.0.{i}"], "conditions": {"ready": i != 2}} for i in range(1, 7)]}
    assert endpoints_column(many) == "10.0.0.1:80,10.0.0.3:80,10.0.0.4:80 + 2 more..."
