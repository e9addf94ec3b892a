"""AdmissionReview in, AdmissionReview out: the webhook's protocol, without sockets.

``parse_review`` checks an ``admission.k8s.io/v1`` AdmissionReview and raises
``ReviewError`` (the server answers 400 with its message) for anything malformed.
``build_response`` wraps a decision in a review of the same version with the request's
``uid`` echoed, as the API server requires.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

from meshbox.injector.webhook_patch import PatchOp

API_VERSION = "admission.k8s.io/v1"
KIND = "AdmissionReview"


class ReviewError(ValueError):
    """The request body is not a usable AdmissionReview; the message says what is wrong."""


@dataclass(frozen=True)
class AdmissionRequest:
    """The parts of an AdmissionReview request the webhook uses."""

    uid: str
    kind: str
    operation: str
    namespace: str
    object: dict[str, Any] | None
    dry_run: bool = False


@dataclass
class Decision:
    """What to answer: allowed or denied (with a message), and the patch when allowed."""

    allowed: bool = True
    patch: list[PatchOp] = field(default_factory=list)
    message: str = ""
    warnings: list[str] = field(default_factory=list)


def _field(data: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in data:
        raise ReviewError(f"{where}.{name} is missing")
    value = data[name]
    if not isinstance(value, kind):
        raise ReviewError(f"{where}.{name} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def parse_review(body: bytes) -> AdmissionRequest:
    """Parse and check an AdmissionReview body; raise ReviewError naming the first problem."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReviewError(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ReviewError(f"body must be a JSON object (an AdmissionReview), got {type(data).__name__}")
    if data.get("apiVersion") != API_VERSION:
        raise ReviewError(f"apiVersion must be {API_VERSION!r}, got {data.get('apiVersion')!r}")
    if data.get("kind") != KIND:
        raise ReviewError(f"kind must be {KIND!r}, got {data.get('kind')!r}")
    request = _field(data, "request", dict, "review")
    uid = _field(request, "uid", str, "request")
    if not uid:
        raise ReviewError("request.uid is empty")
    kind = _field(request, "kind", dict, "request")
    operation = _field(request, "operation", str, "request")
    namespace = request.get("namespace", "")
    if not isinstance(namespace, str):
        raise ReviewError(f"request.namespace must be a str, got {type(namespace).__name__}")
    obj = request.get("object")
    if obj is not None and not isinstance(obj, dict):
        raise ReviewError(f"request.object must be a JSON object, got {type(obj).__name__}")
    if operation == "CREATE" and obj is None:
        raise ReviewError("request.object is missing for a CREATE")
    dry_run = request.get("dryRun", False)
    return AdmissionRequest(
        uid=uid,
        kind=str(kind.get("kind", "")),
        operation=operation,
        namespace=namespace,
        object=obj,
        dry_run=bool(dry_run),
    )


def build_response(uid: str, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview to send back for ``decision`` (patch base64-encoded when non-empty)."""
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.allowed and decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(decision.patch).encode()).decode("ascii")
    if not decision.allowed:
        response["status"] = {"code": 403, "reason": "Forbidden", "message": decision.message}
    if decision.warnings:
        response["warnings"] = decision.warnings
    return {"apiVersion": API_VERSION, "kind": KIND, "response": response}
