"""Generate meshbox.api's Python code (messages, gRPC stubs, mypy stubs) from protos/.

Usage: python scripts/gen_protos.py [OUT_DIR]   (default: protos/, in place)

The staleness test runs this into a temporary directory and compares.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
# Only files that declare a service get *_pb2_grpc modules.
SERVICE_PROTOS = {"certificate.proto", "discovery.proto"}


def proto_files() -> list[Path]:
    """All .proto files of the model, sorted for reproducible output."""
    return sorted((PROTO_ROOT / "meshbox").rglob("*.proto"))


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) with the python, grpc and mypy plugins into out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    # protoc-gen-mypy lives next to the interpreter of the venv running this script.
    env_path = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ["PATH"] = env_path
    for proto in proto_files():
        rel = proto.relative_to(PROTO_ROOT)
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{include}",
            f"--python_out={out_dir}",
            f"--mypy_out={out_dir}",
        ]
        if proto.name in SERVICE_PROTOS:
            args += [f"--grpc_python_out={out_dir}", f"--mypy_grpc_out={out_dir}"]
        if protoc.main([*args, str(proto)]) != 0:
            raise SystemExit(f"protoc failed on {rel}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT)
