"""Regenerate the committed gRPC/Connect code from ``proto/`` (run from anywhere).

    python scripts/generate_proto.py            # into presence_actors/gateway/grpc_gen
    python scripts/generate_proto.py --out DIR  # elsewhere (the staleness test does this)

Uses grpcio-tools' bundled ``protoc`` with two plugins from PyPI, pinned in the
``test`` extra: ``protoc-gen-py`` (protobuf-py messages, ``*_pb.py``) and
``protoc-gen-connectrpc`` (the service, ``*_connect.py``). The output only
depends on the .proto files and the plugin versions, so a regenerated tree
compares byte for byte with the committed one.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
DEFAULT_OUT = ROOT / "presence_actors" / "gateway" / "grpc_gen"
PLUGINS = ("protoc-gen-py", "protoc-gen-connectrpc")


def plugin_path(name: str) -> str:
    """The plugin next to this interpreter (a venv's bin), else the one on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: pip install -e '.[test]'")
    return found


def generate(out: Path) -> None:
    """Replace ``out`` with the code generated from every .proto under proto/."""
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        *(f"--plugin={name}={plugin_path(name)}" for name in PLUGINS),
        f"--py_out={out}",
        f"--connectrpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    generate(parser.parse_args().out)


if __name__ == "__main__":
    main()
