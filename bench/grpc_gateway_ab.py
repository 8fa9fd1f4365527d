"""One process, no sockets: ``GetMultipleUserStatus`` through connectrpc vs the fast path.

    python bench/grpc_gateway_ab.py [--ids 100] [--rounds 40]

Runs a server in this process (database in a temporary directory, nobody
connected: every id asked is an unknown user, the same engine work on both
sides) and calls the gateway's ASGI handler directly with one binary gRPC
request, alternating batches of 50 calls between connectrpc's application and
:class:`presence_actors.gateway.grpc_unary.FastBulkStatus`. Printed: the
process CPU per call of each, which is the gateway's and the engine's part of a
call without HTTP/2 (hypercorn's share is the same on both paths). Interleaving
the batches makes a loaded machine weigh on both sides alike.
"""

from __future__ import annotations

import argparse
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from presence_actors.config import Settings
from presence_actors.gateway.grpc_gen.presence.v1 import presence_pb as pb
from presence_actors.gateway.grpc_unary import PATH
from presence_actors.gateway.server import open_server

BATCH = 50


def _scope() -> dict[str, Any]:
    return {
        "type": "http",
        "http_version": "2",
        "method": "POST",
        "scheme": "http",
        "path": PATH,
        "root_path": "",
        "query_string": b"",
        "headers": [(b"content-type", b"application/grpc"), (b"te", b"trailers")],
        "extensions": {"http.response.trailers": {}},
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
    }


async def _call(handler: Any, envelope: bytes) -> None:
    sent: list[dict[str, Any]] = []
    asked = False

    async def receive() -> dict[str, Any]:
        nonlocal asked
        if asked:
            await trio.sleep_forever()
        asked = True
        return {"type": "http.request", "body": envelope, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await handler(_scope(), receive, send)
    if sent[-1].get("headers") != [(b"grpc-status", b"0")]:
        raise RuntimeError(f"the call failed: {sent[-1]}")


async def _run(ids: int, rounds: int) -> None:
    body = pb.GetMultipleUserStatusRequest(user_ids=[f"u{i}" for i in range(ids)]).to_binary()
    envelope = struct.pack(">BI", 0, len(body)) + body
    with tempfile.TemporaryDirectory() as directory:
        base = Settings()
        settings = attrs.evolve(
            base,
            server=attrs.evolve(base.server, port=0),
            persistence=attrs.evolve(base.persistence, path=str(Path(directory) / "p.db")),
            logging=attrs.evolve(base.logging, file=""),
        )
        async with open_server(settings) as server:
            gateway = server.app.grpc
            paths = {"connectrpc": gateway._app, "fast path": gateway.bulk_status.handle}
            spent = dict.fromkeys(paths, 0.0)
            for _ in range(rounds):
                for name, handler in paths.items():
                    started = time.process_time()
                    for _ in range(BATCH):
                        await _call(handler, envelope)
                    spent[name] += time.process_time() - started
    for name, seconds in spent.items():
        print(f"{name}: {seconds / (rounds * BATCH) * 1e6:,.0f} us CPU per call of {ids} ids")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    trio.run(_run, args.ids, args.rounds)


if __name__ == "__main__":
    main()
