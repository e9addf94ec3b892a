"""How meshctl reaches discovery's HTTP port and a proxy's admin API, wherever the mesh runs.

- explicit addresses (``--discovery URL`` / ``--admin URL``: a port-forward, a test);
- Kubernetes, through kubectl and its API server: ``kubectl get --raw`` on discovery's Service proxy, and
  ``kubectl port-forward`` to the pod's 127.0.0.1:15000 (the admin API listens on loopback only);
- the local cluster (its module ``local_access``), by entering the node's or the pod's network namespace.

Every failure is an AccessError naming what could not be reached and why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import urllib.error
import urllib.request
from typing import Protocol

import click

DISCOVERY_NAMESPACE = "meshbox-system"
DISCOVERY_SERVICE = "meshbox-discovery"
DISCOVERY_HTTP_PORT = 15014
ADMIN_PORT = 15000
TIMEOUT_S = 10.0


class AccessError(click.ClickException):
    """Discovery or a proxy could not be asked; the message says which and why."""


class MeshAccess(Protocol):
    def discovery_get(self, path: str) -> bytes:
        """GET ``path`` on discovery's HTTP port."""
        ...

    def admin_get(self, pod: str, namespace: str, path: str) -> bytes:
        """GET ``path`` on the admin API of the proxy in ``namespace/pod``."""
        ...


def http_get(url: str) -> bytes:
    """One GET; a non-2xx answer or a transport failure is an AccessError."""
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as reply:
            return bytes(reply.read())
    except urllib.error.HTTPError as exc:
        raise AccessError(f"GET {url}: HTTP {exc.code}: {exc.read().decode(errors='replace').strip()}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AccessError(f"GET {url}: {reason}") from None


class DirectAccess:
    """Discovery and one proxy admin API at addresses the user gives."""

    def __init__(self, discovery_url: str | None = None, admin_url: str | None = None) -> None:
        self.discovery_url = (discovery_url or "").rstrip("/")
        self.admin_url = (admin_url or "").rstrip("/")

    def discovery_get(self, path: str) -> bytes:
        if not self.discovery_url:
            raise AccessError("no discovery address (give --discovery http://HOST:15014)")
        return http_get(self.discovery_url + path)

    def admin_get(self, pod: str, namespace: str, path: str) -> bytes:
        if not self.admin_url:
            raise AccessError("no proxy admin address (give --admin http://HOST:15000)")
        return http_get(self.admin_url + path)


_FORWARDING = re.compile(r"Forwarding from 127\.0\.0\.1:(\d+) ->")


class KubernetesAccess:
    """Through kubectl, so through the cluster's API server: nothing works without one (said plainly)."""

    def __init__(self, kubectl: str = "kubectl") -> None:
        self.kubectl = kubectl

    def _need_kubectl(self) -> str:
        path = shutil.which(self.kubectl)
        if path is None:
            raise AccessError(f"{self.kubectl} not found: reaching a Kubernetes mesh needs kubectl and an API server")
        return path

    def discovery_get(self, path: str) -> bytes:
        raw = (f"/api/v1/namespaces/{DISCOVERY_NAMESPACE}/services/{DISCOVERY_SERVICE}:{DISCOVERY_HTTP_PORT}"
               f"/proxy{path}")
        result = subprocess.run([self._need_kubectl(), "get", "--raw", raw], capture_output=True, timeout=30)
        if result.returncode != 0:
            raise AccessError(f"kubectl get --raw {raw} failed (is a Kubernetes API server reachable?): "
                              f"{result.stderr.decode(errors='replace').strip()}")
        return result.stdout

    def admin_get(self, pod: str, namespace: str, path: str) -> bytes:
        forward = subprocess.Popen(
            [self._need_kubectl(), "port-forward", "-n", namespace, f"pod/{pod}", f":{ADMIN_PORT}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert forward.stdout is not None and forward.stderr is not None
            line = forward.stdout.readline()
            m = _FORWARDING.search(line)
            if m is None:
                forward.kill()
                error = forward.stderr.read().strip()
                raise AccessError(f"kubectl port-forward to {namespace}/{pod}:{ADMIN_PORT} failed "
                                  f"(is a Kubernetes API server reachable?): {error or line.strip()}")
            return http_get(f"http://127.0.0.1:{m.group(1)}{path}")
        finally:
            if forward.poll() is None:
                forward.terminate()
                forward.wait(timeout=10)
