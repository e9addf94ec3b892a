"""The workload rule both the proxy and discovery apply."""

from __future__ import annotations

from meshbox.api.workload import app_name, workload_name


def test_a_deployment_pod_names_its_deployment_and_a_bare_pod_itself() -> None:
    assert workload_name("service-one-5f7b9c8d4-x2x9z") == "service-one"
    assert workload_name("service-two-v1") == "service-two-v1"
    assert workload_name("") == "unknown"


def test_the_app_is_the_first_app_label_else_the_workload() -> None:
    assert app_name({"app": "reviews", "app.kubernetes.io/name": "shop-reviews"}, "reviews-v1") == "shop-reviews"
    assert app_name({"app": "reviews"}, "reviews-v1") == "reviews"
    assert app_name({}, "reviews-v1") == "reviews-v1"
