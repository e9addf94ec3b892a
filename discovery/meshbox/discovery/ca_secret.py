"""In Kubernetes, the mesh CA's root lives in the Secret ``meshbox-ca`` (keys ca.crt, ca.key, optional
roots.pem), mounted as discovery's ``--ca-dir``. If the operator provided none, the first discovery
to start generates a root and creates the Secret through the API: the create is atomic, and a
replica that loses the race (409 Conflict) reads the winner's root instead. The mount catches up
on its own (the kubelet syncs Secret volumes); from then on the directory is the source, and
editing the Secret rotates the root (docs/security.md). Needs RBAC ``get`` and ``create`` on
that Secret in discovery's namespace.
"""

from __future__ import annotations

import base64
import logging

from cryptography.hazmat.primitives import serialization
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from meshbox.discovery.ca_files import CERT_FILE, KEY_FILE, ROOTS_FILE, CaMaterial, generate_root, material_from_pem

log = logging.getLogger("meshbox.discovery.ca")
NOT_FOUND = 404
CONFLICT = 409


def _material(secret: client.V1Secret, where: str) -> CaMaterial:
    data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
    if CERT_FILE not in data or KEY_FILE not in data:
        raise ValueError(f"{where} has no {CERT_FILE} and {KEY_FILE}")
    return material_from_pem(data[CERT_FILE], data[KEY_FILE], data.get(ROOTS_FILE), where=f"{where}: ")


async def load_or_create_secret(api: client.ApiClient, namespace: str, name: str, trust_domain: str) -> CaMaterial:
    """The root in Secret namespace/name, generated and stored there first if the Secret does not exist."""
    core = client.CoreV1Api(api)
    where = f"Secret {namespace}/{name}"
    try:
        return _material(await core.read_namespaced_secret(name, namespace), where)
    except ApiException as exc:
        if exc.status != NOT_FOUND:
            raise ValueError(f"cannot read {where}: {exc.status} {exc.reason}") from None
    cert, key = generate_root(trust_domain)
    pem = serialization.Encoding.PEM
    data = {CERT_FILE: cert.public_bytes(pem),
            KEY_FILE: key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())}
    body = client.V1Secret(
        api_version="v1", kind="Secret", type="Opaque",
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels={"app.kubernetes.io/part-of": "meshbox"}),
        data={k: base64.b64encode(v).decode() for k, v in data.items()})
    try:
        await core.create_namespaced_secret(namespace, body)
    except ApiException as exc:
        if exc.status != CONFLICT:
            raise ValueError(f"cannot create {where}: {exc.status} {exc.reason}") from None
        log.info("%s was created by another discovery meanwhile; using its root", where)
        return _material(await core.read_namespaced_secret(name, namespace), where)
    log.warning("generated a new mesh root CA and stored it in %s", where)
    return CaMaterial(cert, key, (cert,))
