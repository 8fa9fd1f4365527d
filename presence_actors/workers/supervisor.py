"""The supervisor: N worker processes on one port, restarted when they die, stopped
together.

Each worker is ``python -m presence_actors serve --worker I`` (see :mod:`.worker`),
started with :func:`trio.lowlevel.open_process` rather than ``multiprocessing``: trio
waits for a child and reads its pipes natively, nothing is pickled, and a child can
be put in its own process group at fork time, so a Ctrl-C in a terminal reaches only
the supervisor, which forwards it once.

The workers share the port through ``SO_REUSEPORT``: each listens on its own socket
and the kernel spreads new connections over them, so no process accepts for another.
The supervisor holds the port bound, not listening, for its whole run: a port of 0
becomes one real port every worker (and every restart) binds, and no other program
can take it between restarts. It receives no connections.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import attrs
import trio

from ..config import Settings
from .worker import READY_LINE, READY_LINE_LIMIT, check_workers

log = logging.getLogger("presence_actors.workers")

# Python starts slowly on a busy machine; a worker loads its state before it serves.
STARTUP_TIMEOUT = 60.0
# A worker that dies is restarted after a pause that doubles each time it dies again
# soon after, so one that cannot start does not spin; up this long, it starts over.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
BACKOFF_RESET = 30.0
# A worker's stop is bounded like serve's (twice the graceful timeout, see
# gateway.server's watchdog); this leaves room for its own margin and the exit.
STOP_MARGIN = 10.0
EXIT_FAILED = 1


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` the way the workers bind it (``SO_REUSEPORT``,
    as hypercorn does for ``workers > 1``), not listening: it holds the port, a real
    one when ``port`` is 0, and receives no connections. The caller closes it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


@attrs.define
class Worker:
    """One slot: worker ``index`` and its current process, if any."""

    index: int
    process: trio.Process | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


class Supervisor:
    """Starts the workers, restarts one that dies, stops them all on a signal.

    ``command(index, port)`` is worker ``index``'s argv; ``announce(url)`` is called
    once, when every worker serves.
    """

    def __init__(
        self,
        settings: Settings,
        command: Callable[[int, int], Sequence[str]],
        announce: Callable[[str], None],
        *,
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self._settings = settings
        self._startup_timeout = startup_timeout
        self._command = command
        self._announce = announce
        self._workers = [Worker(index) for index in range(1, settings.server.workers + 1)]
        self._env = _child_env()
        self._port = 0

    async def run(self) -> int:
        """Until SIGINT or SIGTERM (forwarded to every worker), or until a worker fails
        to start the first time; returns the exit status: 0 when every worker stopped
        cleanly, else 1.

        Ordering: signals are watched before the first worker starts, so none is
        lost; the URLs are announced once, after every worker reported ready; the
        stop begins only once no task can start another worker.
        """
        check_workers(self._settings)
        server = self._settings.server
        with (
            reserve_port(server.host, server.port) as held,
            trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
        ):
            self._port = held.getsockname()[1]
            failed = trio.Event()
            async with trio.open_nursery() as tasks:
                tasks.start_soon(self._supervise, failed)
                signum = await _first_of(failed, signals)
                tasks.cancel_scope.cancel()
            if signum is None:
                log.error("a worker did not start; stopping the others")
                await self._stop_all(signal.SIGTERM)
                return EXIT_FAILED
            log.info("received %s; stopping the workers", signal.Signals(signum).name)
            return await self._stop_all(signum)

    async def _supervise(self, failed: trio.Event) -> None:
        """Start every worker; announce; then restart any that dies (until cancelled).
        Sets ``failed`` instead if one does not start."""
        urls: list[str | None] = []

        async def first_start(worker: Worker) -> None:
            urls.append(await self._start(worker))

        async with trio.open_nursery() as starting:
            for worker in self._workers:
                starting.start_soon(first_start, worker)
        if None in urls:
            failed.set()
            return
        url = urls[0]
        assert url is not None
        self._announce(url)
        async with trio.open_nursery() as running:
            for worker in self._workers:
                running.start_soon(self._keep_running, worker)

    async def _start(self, worker: Worker) -> str | None:
        """Start ``worker``'s process; its URL once it serves, or None if it closed its
        stdout (it is exiting: its own line on stderr says why), wrote anything but a
        ready line, or said nothing for ``startup_timeout`` (then it is killed)."""
        process = await trio.lowlevel.open_process(
            list(self._command(worker.index, self._port)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self._env,
            process_group=0,  # a terminal's Ctrl-C is for the parent, which forwards it
        )
        worker.process, worker.started_at = process, trio.current_time()
        assert process.stdout is not None
        line = None
        with trio.move_on_after(self._startup_timeout):
            line = await _read_line(process.stdout)
        if line == b"":
            return None
        if line is not None and (ready := READY_LINE.fullmatch(line)):
            url = ready[1].decode("ascii")
            log.info("worker %d (pid %d) serves %s", worker.index, process.pid, url)
            return url
        problem = (
            f"said nothing in {self._startup_timeout:g} s"
            if line is None
            else f"wrote {line[:80]!r} instead of its ready line"
        )
        log.error("worker %d (pid %d) %s; killing it", worker.index, process.pid, problem)
        process.kill()
        return None

    async def _keep_running(self, worker: Worker) -> None:
        """Wait for ``worker`` to exit and start it again after its backoff (until
        cancelled: the stop is not this task's)."""
        while True:
            process = worker.process
            assert process is not None
            assert process.stdout is not None
            # Drained, so that a worker that writes to its stdout is never blocked.
            while await process.stdout.receive_some(READY_LINE_LIMIT):
                pass
            status = await process.wait()
            if trio.current_time() - worker.started_at >= BACKOFF_RESET:
                worker.backoff = FIRST_BACKOFF
            log.warning(
                "worker %d (pid %d) exited with %s; restarting it in %.1f s",
                worker.index,
                process.pid,
                _describe_status(status),
                worker.backoff,
            )
            await trio.sleep(worker.backoff)
            worker.backoff = min(2 * worker.backoff, MAX_BACKOFF)
            await self._start(worker)

    async def _stop_all(self, signum: int) -> int:
        """Send ``signum`` to every worker and wait for them all, killing any that is
        still there after its bound (2 x ``server.graceful_timeout`` + a margin).

        A clean stop is status 0, or death by ``signum`` itself (a worker still
        starting, before it handles signals); anything else makes the status 1.
        """
        running = [
            worker.process
            for worker in self._workers
            if worker.process is not None and worker.process.poll() is None
        ]
        for process in running:
            process.send_signal(signum)
        bound = 2 * self._settings.server.graceful_timeout + STOP_MARGIN
        with trio.move_on_after(bound):
            for process in running:
                await process.wait()
        clean = True
        for worker in self._workers:
            if worker.process is None or worker.process not in running:
                continue
            process = worker.process
            if process.returncode is None:
                log.error(
                    "worker %d (pid %d) did not stop in %.0f s; killing it",
                    worker.index,
                    process.pid,
                    bound,
                )
                process.kill()
                await process.wait()
            elif process.returncode not in (0, -signum):
                log.error(
                    "worker %d (pid %d) stopped with %s",
                    worker.index,
                    process.pid,
                    _describe_status(process.returncode),
                )
            clean = clean and process.returncode in (0, -signum)
        return 0 if clean else EXIT_FAILED


async def _first_of(event: trio.Event, signals: AsyncIterator[int]) -> int | None:
    """The first signal received before ``event`` is set, or None."""
    received: int | None = None
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            nonlocal received
            received = await anext(signals)
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await event.wait()
        nursery.cancel_scope.cancel()
    return received


async def _read_line(stream: trio.abc.ReceiveStream) -> bytes:
    """Bytes up to the first newline (or end of file, or the limit)."""
    line = bytearray()
    while b"\n" not in line and len(line) < READY_LINE_LIMIT:
        chunk = await stream.receive_some(READY_LINE_LIMIT - len(line))
        if not chunk:
            break
        line += chunk
    return bytes(line.split(b"\n", 1)[0])


def _describe_status(status: int) -> str:
    if status >= 0:
        return f"status {status}"
    try:
        return f"signal {signal.Signals(-status).name}"
    except ValueError:
        return f"signal {-status}"


def _child_env() -> dict[str, str]:
    """This environment, with the directory holding this ``presence_actors`` first on
    the import path, so that every worker runs the parent's code."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env
