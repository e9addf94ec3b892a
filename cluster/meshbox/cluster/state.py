"""The local cluster's state directory: one JSON file, a lock, and a ledger of everything made.

Every namespace, file and process is recorded in the ledger *before* it is made, so ``down`` can
remove all of it even after a crash half-way through; removing something that is not there is
not an error. state.json is replaced atomically (write to a temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/var/lib/meshbox/local")
STATE_ENV = "MESHBOX_LOCAL_STATE"
FORMAT = 1


class StateError(RuntimeError):
    """The state directory cannot be used (unreadable, corrupt, another format)."""


def default_state_dir() -> Path:
    """$MESHBOX_LOCAL_STATE, else /var/lib/meshbox/local."""
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


def empty_state(prefix: str) -> dict[str, Any]:
    """A fresh state for a cluster whose kernel names start with ``prefix``."""
    return {"format": FORMAT, "prefix": prefix, "ledger": [], "next_veth": 1, "services": {},
            "deployments": {}, "pods": {}, "rules": {}, "discovery": None}


def write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` (temp file in the same directory, fsync, rename)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class StateDir:
    """Paths inside the state directory, and loading/saving its JSON state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "state.json"
        self.registry = root / "registry"
        self.logs = root / "logs"
        self.staging = root / "staging"

    def exists(self) -> bool:
        """Whether a cluster's state is recorded here."""
        return self.file.exists()

    def load(self) -> dict[str, Any]:
        """The recorded state; StateError when it is missing or unreadable."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StateError(f"no local cluster in {self.root}: run `meshctl local up` first") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.file}: cannot read the cluster state: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise StateError(f"{self.file}: not a meshctl local state file (format {FORMAT})")
        return data

    def save(self, state: dict[str, Any]) -> None:
        """Write the state atomically."""
        write_atomically(self.file, json.dumps(state, indent=1, sort_keys=True).encode())

    def make_dirs(self) -> None:
        """Create the state directory and its sub-directories (private to root)."""
        for path in (self.root, self.registry, self.logs, self.staging):
            path.mkdir(mode=0o755, parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cluster's lock: one mutating meshctl command at a time."""
        self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
        with open(self.root / "lock", "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def write_registry(self, name: str, text: str) -> None:
        """Write one object file for the discovery server (renamed into place, never half-written)."""
        fd, tmp = tempfile.mkstemp(prefix=f"{name}.", suffix=".tmp", dir=self.staging)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                out.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.registry / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def remove_registry(self, name: str) -> None:
        """Remove one object file (absent is fine)."""
        with contextlib.suppress(FileNotFoundError):
            (self.registry / name).unlink()

    def pod_log_dir(self, namespace: str, pod: str) -> Path:
        """Directory of a pod's container logs."""
        return self.logs / f"{namespace}_{pod}"
