"""Replacing a file so that readers never see half of it (temp file beside it, fsync, rename, fsync of the folder)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_atomically(path: Path, data: bytes, mode: int | None = None, *, temp_dir: Path | None = None) -> None:
    """Replace ``path`` with ``data``; on any error ``path`` is untouched and no temp file is left.

    ``mode`` defaults to the replaced file's permissions, or 0644 less the umask for a new file.
    ``temp_dir`` (same file system) keeps the temp file out of a directory whose every entry is
    read by someone, e.g. /etc/netns/NAME, which ``ip netns exec`` bind-mounts whole. Raises OSError.
    """
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=temp_dir or path.parent)
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
    # The rename itself must survive a crash too (e.g. a CA key written once and then used).
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
