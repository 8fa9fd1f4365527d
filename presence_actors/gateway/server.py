"""Run the server: the engine, and the PortServer (our listener: WebSocket upgrades
served directly, everything else through hypercorn's connection handling) inside it."""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
from attrs import frozen
from hypercorn.config import Config as HypercornConfig

from ..actors import Engine, open_engine
from ..actors.engine import EngineWriter
from ..actors.session import CLOSE_GOING_AWAY
from ..config import Settings
from ..metrics import Metrics
from ..persistence.backlog import Loss
from .admission import connection_cap
from .app import PresenceApp
from .listener import PortServer

log = logging.getLogger("presence_actors.server")

# hypercorn refuses frames above its own limit with a bare 1009; ours is lower,
# so a client that sends a too-large frame is told TOO_LARGE before the close.
_HYPERCORN_FRAME_FACTOR = 4
# Seconds a client has to complete a TLS handshake.
_TLS_HANDSHAKE_TIMEOUT = 10.0


@frozen
class RunningServer:
    urls: tuple[str, ...]
    port: int
    app: PresenceApp
    engine: Engine
    # Set (once, by the stop) when the shutdown record was committed with nothing
    # else held uncommitted; a threading.Event because the watchdog thread reads it.
    stop_committed: threading.Event

    @property
    def base_url(self) -> str:
        return self.urls[0]


def hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    host = settings.server.host
    config.bind = [
        f"[{host}]:{settings.server.port}" if ":" in host else f"{host}:{settings.server.port}"
    ]
    config.accesslog = None
    # More than one: the listening sockets take SO_REUSEPORT (hypercorn sets it for
    # workers > 1), so that every worker of one machine binds the same port.
    config.workers = settings.server.workers
    config.errorlog = logging.getLogger("hypercorn.error")
    config.graceful_timeout = settings.server.graceful_timeout
    # After a restart every client reconnects at once; hypercorn's default of
    # 100 pending connections makes the rest wait for SYN retries (1 s, 3 s, ...).
    config.backlog = 1024
    # A TLS handshake holds a descriptor too; hypercorn's default gives it a minute.
    config.ssl_handshake_timeout = _TLS_HANDSHAKE_TIMEOUT
    # Not hypercorn's read_timeout: it bounds every read of a connection, so it
    # would cut a gRPC stream or a WebSocket whose client has nothing to say.
    # Request bodies are bounded per request instead (app.bounded_receive);
    # heads by keep_alive_timeout (hypercorn closes a connection idle that long,
    # and it stays "idle" until a request head is complete).
    config.websocket_max_message_size = max(
        _HYPERCORN_FRAME_FACTOR * settings.limits.max_message_bytes, 1 << 20
    )
    if settings.server.tls_cert_file:
        config.certfile = settings.server.tls_cert_file
        config.keyfile = settings.server.tls_key_file
    return config


@asynccontextmanager
async def open_server(settings: Settings) -> AsyncIterator[RunningServer]:
    """Serve for the duration of the block; the server is listening when it starts.

    On exit: new connections are refused, WebSocket sessions stop passing
    messages to the engine, the engine records everyone offline in one batch and
    commits it (within ``server.graceful_timeout``), and only then are open
    sessions closed with 1001 (close frames written without waiting for any
    peer) and connections given up to ``server.graceful_timeout`` to end. So the
    commit is bounded by what it writes, not by closing thousands of
    connections, and never waits for a peer that stopped reading (which can
    hold a send forever); see :func:`serve_until_signalled`.
    """
    metrics = Metrics()
    if settings.auth.mode == "none" and settings.server.host not in _LOOPBACK:
        log.warning(
            "auth.mode is 'none' and the server listens on %s: anyone who can reach it can "
            "claim any userId. Set auth.mode = 'jwt' before exposing it.",
            settings.server.host,
        )
    async with open_engine(settings, on_commit=metrics.observe_commit) as engine:
        app = PresenceApp(engine, settings, metrics)
        shutdown = trio.Event()
        served = trio.Event()
        stop_committed = threading.Event()

        port_server = PortServer(
            app,
            app.websockets,
            hypercorn_config(settings),
            connection_cap(settings.server.max_connections),
        )

        async def serve(*, task_status: trio.TaskStatus[list[str]]) -> None:
            try:
                await port_server.serve(shutdown.wait, task_status=task_status)
            finally:
                served.set()

        collecting = gc.isenabled()
        try:
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(serve)
                port = int(binds[0].rsplit(":", 1)[1])
                try:
                    yield RunningServer(tuple(binds), port, app, engine, stop_committed)
                finally:
                    shutdown.set()
                    # Every session allocates as it ends; a full collection then scans
                    # every live session object, many times over (the largest cost of
                    # closing 5,000 sessions). Garbage without cycles is still freed.
                    gc.disable()
                    # The commit before the sockets: first nothing more reaches the engine
                    # from a WebSocket, then everyone is recorded offline in one batch and
                    # committed while the sessions are parked, not competing for the loop;
                    # only then are thousands of close handshakes started.
                    app.websockets.stop_reading()
                    await engine.record_shutdown()
                    if engine.writer.statistics().pending_intents == 0:
                        stop_committed.set()
                    app.websockets.close_all(CLOSE_GOING_AWAY, "server shutting down")
                    app.grpc.close_all(CLOSE_GOING_AWAY, "server shutting down")
                    with trio.move_on_after(settings.server.graceful_timeout, shield=True):
                        await served.wait()
                    if not served.is_set():
                        left = len(app.websockets.sessions)
                        log.warning("%d connections did not end in time", left)
        finally:
            if collecting:
                gc.enable()


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


async def serve_until_signalled(
    settings: Settings, *, task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully and return.

    Raises :class:`~..persistence.WritesLost` (already logged) when the stop
    could not commit everything. A connection whose peer stopped reading can
    keep a send (and with it the process) alive after the final commit; a
    watchdog ends the process once the shutdown has taken longer than its
    bounded steps can (see :func:`_start_watchdog`).
    """
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_server(settings) as server:
            tune_garbage_collector()
            task_status.started(server)
            async for signum in signals:
                log.info("received %s; shutting down", signal.Signals(signum).name)
                seconds = 2 * settings.server.graceful_timeout + _WATCHDOG_MARGIN
                _start_watchdog(seconds, server.engine.writer, server.stop_committed)
                break


# Collect young objects after this many net allocations instead of 700: a
# server holding 10,000 sessions otherwise runs a full collection of ~250,000
# objects every second or two, 40-120 ms each, which is both CPU and the tail
# of push latency. Garbage without cycles is freed by reference counting either way.
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collector() -> None:
    """Settings for a long-running server process (called once, when it is ready).

    What the process allocated while starting (modules, settings, the loaded
    state) lives as long as it does: frozen, the collector never scans it again.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


# The stop's steps are bounded by the graceful timeout twice (the final commit,
# then the connections) plus the writer's last attempt (1 s) and a commit already
# running in its thread (up to the 1 s busy timeout); this leaves room for those.
_WATCHDOG_MARGIN = 5.0

EXIT_WRITES_LOST = 1


def _start_watchdog(seconds: float, writer: EngineWriter, stop_committed: threading.Event) -> None:
    """End the process after ``seconds``, with a status and a line that say what it lost.

    Runs in a thread: it reads ``writer.loss``, which the writer sets once, when
    its final flush is over, and otherwise whether the shutdown record was
    committed and the writer holds nothing (``pending_intents``: counters the
    event loop writes and this thread only reads). Connections still tearing
    down when it fires lose nothing if so: the exit is 0.
    """

    def expire() -> None:
        loss = writer.loss
        if loss is None and stop_committed.is_set() and writer.statistics().pending_intents == 0:
            loss = Loss()
        if loss is None:
            log.error(
                "the stop did not finish in %.1f s and the final commit had not ended:"
                " writes it had not committed are lost; exiting",
                seconds,
            )
        elif loss:
            log.error("the stop did not finish in %.1f s (stuck connections); exiting", seconds)
        else:
            log.warning(
                "the stop did not finish in %.1f s (stuck connections); everything was"
                " committed; exiting",
                seconds,
            )
        logging.shutdown()
        os._exit(EXIT_WRITES_LOST if loss is None or loss else 0)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
