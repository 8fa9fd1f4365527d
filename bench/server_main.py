"""The server under test, as its own process: ``python bench/server_main.py``.

Settings come from the defaults plus ``PRESENCE_*`` environment variables only
(``config.toml`` is not read, so a benchmark does not depend on the checkout's
file). Once the server listens, one JSON line ``{"port": N, "pid": P}`` is
printed on stdout; SIGTERM or SIGINT shut the server down gracefully and the
process exits 0.

With ``server.workers`` > 1 (``PRESENCE_SERVER_WORKERS``) this process is the
supervisor ``serve --workers N`` runs, and its workers are ``python -m
presence_actors serve --worker I`` as there (same environment, so the same
settings; the working directory holds no config.toml): the line is printed once
every worker serves, ``pid`` is the supervisor's, the workers are its children.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

import orjson
import trio

from presence_actors.config import Settings, load_settings
from presence_actors.gateway.server import serve_until_signalled
from presence_actors.logs import configure_logging


def _hello(port: int) -> None:
    sys.stdout.write(orjson.dumps({"port": port, "pid": os.getpid()}).decode() + "\n")
    sys.stdout.flush()


async def _serve(settings: Settings) -> None:
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_until_signalled, settings)
        _hello(server.port)


def _worker_command(workers: int, index: int, port: int) -> list[str]:
    return [
        *(sys.executable, "-m", "presence_actors", "serve", "--worker", str(index)),
        *("--port", str(port), "--workers", str(workers)),
    ]


def _supervise(settings: Settings) -> int:
    from presence_actors.workers import Supervisor

    workers = settings.server.workers
    supervisor = Supervisor(
        settings,
        lambda index, port: _worker_command(workers, index, port),
        lambda url: _hello(urlsplit(url).port or 0),
    )
    return trio.run(supervisor.run)


def main() -> None:
    settings = load_settings(None)
    configure_logging(settings.logging)
    # getattr: a revision from before server.workers (--server-rev 8215680) runs too.
    if getattr(settings.server, "workers", 1) > 1:
        sys.exit(_supervise(settings))
    trio.run(_serve, settings)


if __name__ == "__main__":
    main()
