"""The server under test, as its own process: ``python bench/server_main.py``.

Settings come from the defaults plus ``PRESENCE_*`` environment variables only
(``config.toml`` is not read, so a benchmark does not depend on the checkout's
file). Once hypercorn listens, one JSON line ``{"port": N, "pid": P}`` is
printed on stdout; SIGTERM or SIGINT shut the server down gracefully and the
process exits 0.
"""

from __future__ import annotations

import os
import sys

import orjson
import trio

from presence_actors.config import load_settings
from presence_actors.gateway.server import serve_until_signalled
from presence_actors.logs import configure_logging


async def _serve() -> None:
    settings = load_settings(None)
    configure_logging(settings.logging)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_until_signalled, settings)
        sys.stdout.write(orjson.dumps({"port": server.port, "pid": os.getpid()}).decode() + "\n")
        sys.stdout.flush()


def main() -> None:
    trio.run(_serve)


if __name__ == "__main__":
    main()
