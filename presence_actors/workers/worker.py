"""A worker's side: its settings, its life, and the two pipes to its supervisor.

Its stdout carries one line, ``ready URL``, once it serves; its stdin is a pipe the
supervisor never writes, so that the worker sees end of file when the supervisor is
gone (even after a ``kill -9``) and stops as on SIGTERM.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import sys
from pathlib import Path

import attrs
import trio

from ..config import ConfigError, Settings
from ..gateway.server import RunningServer, serve_until_signalled

log = logging.getLogger("presence_actors.workers")

# The ready line is ``ready URL``; a URL is far shorter.
READY_LINE_LIMIT = 4096
READY_LINE = re.compile(rb"ready (https?://[!-~]+)")


def check_workers(settings: Settings) -> None:
    """Refuse ``workers > 1`` without Redis: the workers would be separate servers
    that neither see each other's users nor share a database."""
    workers = settings.server.workers
    if workers > 1 and not settings.cluster.redis_url:
        raise ConfigError(
            f"server.workers = {workers}: expected cluster.redis_url (or REDIS_URL) to be"
            " set: workers are nodes of a cluster, and a cluster needs Redis"
        )


def worker_settings(settings: Settings, index: int, pid: int) -> Settings:
    """The settings of worker ``index`` running as process ``pid``: a node name of its
    own (``server.node``, else the host name, then ``-index-pid``) and a log file of its
    own (``-index`` before the suffix): rotation is not safe across processes. (A node
    of a cluster opens no database: the shared facts are in Redis.)

    The node name changes with every restart: a node is one process and its sessions.
    Under the same name, a worker restarted before its predecessor's liveness expired
    (``cluster.node_ttl``) would keep that liveness alive, and the sessions that died
    with the predecessor would never be counted as lost.
    """
    server = settings.server
    node = f"{server.node or socket.gethostname()}-{index}-{pid}"
    logging_ = settings.logging
    if logging_.file:
        logging_ = attrs.evolve(logging_, file=_numbered(logging_.file, index))
    return attrs.evolve(settings, server=attrs.evolve(server, node=node), logging=logging_)


def _numbered(path: str, index: int) -> str:
    """``logs/presence.log`` -> ``logs/presence-2.log``."""
    file = Path(path)
    return str(file.with_name(f"{file.stem}-{index}{file.suffix}"))


async def serve_worker(settings: Settings) -> None:
    """A worker's life: serve as ``serve`` does until SIGINT or SIGTERM, say ``ready``
    to the parent once listening, and stop if the parent is gone."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_when_orphaned)
        async with trio.open_nursery() as serving:
            server: RunningServer = await serving.start(serve_until_signalled, settings)
            _report_ready(server.base_url)
        nursery.cancel_scope.cancel()


async def _stop_when_orphaned() -> None:
    """In a worker: wait for end of file on stdin (the parent's pipe), then send this
    process SIGTERM, so that it stops the way the parent would have stopped it."""
    stream = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stream:
        while await stream.receive_some(READY_LINE_LIMIT):
            pass
    log.warning("the supervising process is gone; stopping")
    os.kill(os.getpid(), signal.SIGTERM)


def _report_ready(base_url: str) -> None:
    """In a worker: tell the parent it serves (its only line on stdout)."""
    sys.stdout.write(f"ready {base_url}\n")
    sys.stdout.flush()
