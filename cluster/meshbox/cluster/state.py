"""The local cluster's state directory: one JSON file (meshbox.cluster.model), a lock, and a ledger.

Every namespace, file and process is recorded in the ledger *before* it is made, so ``down`` can
remove all of it even after a crash half-way through; removing something that is not there is
not an error. state.json is replaced atomically (write to a temp file, fsync, rename).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from pathlib import Path

from meshbox.api.files import write_atomically
from meshbox.cluster.model import READABLE_FORMATS, ClusterState

DEFAULT_STATE_DIR = Path("/var/lib/meshbox/local")
STATE_ENV = "MESHBOX_LOCAL_STATE"


class StateError(RuntimeError):
    """The state directory cannot be used (unreadable, corrupt, another format)."""


def default_state_dir() -> Path:
    """$MESHBOX_LOCAL_STATE, else /var/lib/meshbox/local."""
    return Path(os.environ.get(STATE_ENV) or DEFAULT_STATE_DIR)


class StateDir:
    """Paths inside the state directory, and loading/saving its JSON state."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.file = root / "state.json"
        self.registry = root / "registry"
        self.logs = root / "logs"
        self.staging = root / "staging"  # made by the first format only; removed by down

    def exists(self) -> bool:
        """Whether a cluster's state is recorded here."""
        return self.file.exists()

    def load(self) -> ClusterState:
        """The recorded state; StateError when it is missing or unreadable."""
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StateError(f"no local cluster in {self.root}: run `meshctl local up` first") from None
        except (OSError, ValueError) as exc:
            raise StateError(f"{self.file}: cannot read the cluster state: {exc}") from None
        if not isinstance(data, dict) or data.get("format") not in READABLE_FORMATS:
            raise StateError(f"{self.file}: not a meshctl local state file (formats {READABLE_FORMATS})")
        try:
            return ClusterState.from_json(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"{self.file}: cannot read the cluster state: {exc!r}") from None

    def save(self, state: ClusterState) -> None:
        """Write the state atomically."""
        write_atomically(self.file, json.dumps(state.to_json(), indent=1, sort_keys=True).encode(), mode=0o644)

    def make_dirs(self) -> None:
        """Create the state directory and its sub-directories (private to root)."""
        for path in (self.root, self.registry, self.logs):
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
        write_atomically(self.registry / name, text.encode(), mode=0o644)

    def remove_registry(self, name: str) -> None:
        """Remove one object file (absent is fine)."""
        with contextlib.suppress(FileNotFoundError):
            (self.registry / name).unlink()

    def pod_log_dir(self, namespace: str, pod: str) -> Path:
        """Directory of a pod's container logs."""
        return self.logs / f"{namespace}_{pod}"
