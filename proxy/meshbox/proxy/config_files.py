"""Read the mesh and proxy config files of the command line.

The YAML parser and the loader cost about 5 MB of resident memory, and memory a Python process has
touched is not given back; this runs only in the command-line child (entry forks it to run cli), so
the long-running proxy gets neither YAML nor protobuf, only the compiled Snapshot.
"""

from __future__ import annotations

from meshbox.api.loader import ConfigError, load_mesh_config, load_proxy_config
from meshbox.api.v1 import mesh_config_pb2, proxy_config_pb2
from meshbox.api.validation import ValidationError


class ConfigFileError(ValueError):
    """A config file that does not load; the message names file, line and field."""


def load_config_files(
    mesh_path: str | None, config_path: str | None
) -> tuple[mesh_config_pb2.MeshConfig, proxy_config_pb2.ProxyConfig | None]:
    """The MeshConfig (defaults applied) and the ProxyConfig (None without a path)."""
    try:
        mesh = load_mesh_config(mesh_path)
        config = load_proxy_config(config_path) if config_path else None
    except (ConfigError, ValidationError) as exc:
        raise ConfigFileError(str(exc)) from None
    return mesh, config
