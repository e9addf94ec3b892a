"""AdmissionReview parsing and responses, without a server."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from meshbox.injector.webhook_review import Decision, ReviewError, build_response, parse_review


def review(**request: Any) -> dict[str, Any]:
    base = {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE",
            "namespace": "default", "object": {"metadata": {}, "spec": {"containers": []}}}
    base.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": base}


def test_a_valid_review_parses() -> None:
    req = parse_review(json.dumps(review(dryRun=True)).encode())
    assert (req.uid, req.kind, req.operation, req.namespace, req.dry_run) == ("u-1", "Pod", "CREATE", "default", True)
    assert req.object == {"metadata": {}, "spec": {"containers": []}}


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "body is not JSON"),
    (b"\xff\xfe", "body is not JSON"),
    (b"[]", "must be a JSON object"),
    (json.dumps({**review(), "apiVersion": "admission.k8s.io/v1beta1"}).encode(), "apiVersion must be"),
    (json.dumps({**review(), "kind": "Pod"}).encode(), "kind must be 'AdmissionReview'"),
    (json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).encode(), "request is missing"),
    (json.dumps(review(uid=7)).encode(), "request.uid must be a str"),
    (json.dumps(review(uid="")).encode(), "request.uid is empty"),
    (json.dumps(review(kind="Pod")).encode(), "request.kind must be a dict"),
    (json.dumps(review(object=None)).encode(), "request.object is missing for a CREATE"),
    (json.dumps(review(object=[1])).encode(), "request.object must be a JSON object"),
    (json.dumps(review(namespace=3)).encode(), "request.namespace must be a str"),
])
def test_malformed_reviews_name_the_problem(body: bytes, reason: str) -> None:
    with pytest.raises(ReviewError, match=reason):
        parse_review(body)


def test_response_echoes_uid_and_encodes_the_patch() -> None:
    ops = [{"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}}]
    out = build_response("abc", Decision(patch=ops, warnings=["careful"]))
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["kind"] == "AdmissionReview"
    response = out["response"]
    assert response["uid"] == "abc"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == ops
    assert response["warnings"] == ["careful"]


def test_an_empty_decision_is_allowed_without_a_patch() -> None:
    assert build_response("x", Decision())["response"] == {"uid": "x", "allowed": True}


def test_a_denial_carries_its_message() -> None:
    response = build_response("x", Decision(allowed=False, message="no"))["response"]
    assert response["allowed"] is False
    assert response["status"]["message"] == "no"
    assert "patch" not in response
