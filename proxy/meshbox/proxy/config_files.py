"""Read the mesh and proxy config files in a short-lived child process.

The YAML parser and the loader cost about 5 MB of resident memory, and memory a Python process has
touched is not given back; so a forked child parses and validates the files with meshbox.api.loader and
hands back serialized messages (or the error text). The caller is the command line (cli), itself run in
a child by entry: the long-running proxy gets neither YAML nor protobuf, only the compiled Snapshot.
"""

from __future__ import annotations

import os
import pickle

from meshbox.api.v1 import mesh_config_pb2, proxy_config_pb2


class ConfigFileError(ValueError):
    """A config file that does not load; the message names file, line and field."""


def _load(mesh_path: str | None, config_path: str | None) -> tuple[str, bytes, bytes | None]:
    from meshbox.api.loader import ConfigError, load_mesh_config, load_proxy_config
    from meshbox.api.validation import ValidationError

    try:
        mesh = load_mesh_config(mesh_path)
        config = load_proxy_config(config_path) if config_path else None
    except (ConfigError, ValidationError) as exc:
        return "error", str(exc).encode(), None
    return "ok", mesh.SerializeToString(), config.SerializeToString() if config is not None else None


def load_config_files(
    mesh_path: str | None, config_path: str | None
) -> tuple[mesh_config_pb2.MeshConfig, proxy_config_pb2.ProxyConfig | None]:
    """The MeshConfig (defaults applied) and the ProxyConfig (None without a path), loaded in a child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status = 1
        try:
            with os.fdopen(write_end, "wb") as out:
                out.write(pickle.dumps(_load(mesh_path, config_path)))
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as incoming:
        data = incoming.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise ConfigFileError(f"loading the config files failed (child exit status {status})")
    kind, mesh_bytes, config_bytes = pickle.loads(data)
    if kind == "error":
        raise ConfigFileError(mesh_bytes.decode())
    mesh = mesh_config_pb2.MeshConfig.FromString(mesh_bytes)
    config = proxy_config_pb2.ProxyConfig.FromString(config_bytes) if config_bytes is not None else None
    return mesh, config
