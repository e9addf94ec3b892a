"""What each supported container image means on the local cluster (pure).

There are no image pulls here: an image name picks a program that is already installed.
The list is short and explicit; anything else is refused by name.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshbox.api.defaults import PROXY_UID

ECHOSERVER_IMAGES = (
    "gcr.io/google_containers/echoserver:1.4",
    "k8s.gcr.io/echoserver:1.4",
    "registry.k8s.io/echoserver:1.4",
)
SUPPORTED = (*ECHOSERVER_IMAGES, "<hub>/init:<tag>", "<hub>/proxy:<tag>")


class ImageError(ValueError):
    """An image the local cluster cannot run."""


@dataclass(frozen=True)
class Launch:
    """The program a container runs, and as whom."""

    argv: list[str]
    uid: int
    gid: int


def bin_dir() -> Path:
    """Where meshbox's console scripts live (this interpreter's venv)."""
    return Path(sys.executable).parent


def _repository(image: str) -> str:
    """``hub/name:tag`` → ``name`` (digests and registry ports handled)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def _user(container: dict[str, Any], default: int) -> tuple[int, int]:
    security = container.get("securityContext") or {}
    uid = security.get("runAsUser", default)
    gid = security.get("runAsGroup", uid)
    return int(uid), int(gid)


def _echo_port(container: dict[str, Any]) -> int:
    ports = container.get("ports") or []
    return int(ports[0]["containerPort"]) if ports else 8080


def launch_for(container: dict[str, Any], *, init: bool) -> Launch:
    """The Launch for a container spec; raises ImageError naming the image and the supported list."""
    image = str(container.get("image", ""))
    command = [str(c) for c in container.get("command") or []]
    args = [str(a) for a in container.get("args") or []]
    repo = _repository(image)
    if image in ECHOSERVER_IMAGES and not command:
        uid, gid = _user(container, 0)
        echo = [sys.executable, "-m", "meshbox.cluster.echoserver", "--port", str(_echo_port(container))]
        return Launch(echo, uid, gid)
    if repo == "init" and "/" in image and init:
        uid, gid = _user(container, 0)
        return Launch([str(bin_dir() / "meshbox-init"), *args], uid, gid)
    if repo == "proxy" and "/" in image and not init:
        uid, gid = _user(container, PROXY_UID)
        return Launch([str(bin_dir() / "meshbox-agent"), *args], uid, gid)
    where = "init container" if init else "container"
    raise ImageError(f"{where} {container.get('name')!r}: image {image!r} is not supported by the local cluster "
                     f"(supported: {', '.join(SUPPORTED)}; init only as an init container, proxy only as a "
                     "container, echoserver without a command override)")


def is_agent(launch: Launch) -> bool:
    """Whether a container runs the sidecar agent (the proxy image)."""
    return bool(launch.argv) and Path(launch.argv[0]).name == "meshbox-agent"
