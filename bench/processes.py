"""The processes of a run: the server under test and the load-generator workers.

Each is a separate OS process pinned to a core with ``taskset``, so the
server's CPU figures are its own and a busy generator cannot borrow its core.
Both context managers guarantee the process is gone when they exit: the
server by SIGTERM (its exit status is checked), a worker by closing its
stdin, each escalating to SIGKILL after a bounded wait.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import trio
from attrs import define, field, frozen

from bench import procstat

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVER_READY_TIMEOUT = 30.0
# The server's own graceful_timeout (5 s) plus the final flush, with room to spare.
SERVER_STOP_TIMEOUT = 30.0
WORKER_STOP_TIMEOUT = 10.0


class BenchError(Exception):
    """A run could not be carried out (server not ready, unclean exit, worker died)."""


def pinned(core: int, *argv: str) -> list[str]:
    return ["taskset", "-c", str(core), *argv]


def log_file(path: Path) -> BinaryIO:
    """Where a child's stderr goes (opened once, before the child starts)."""
    return open(path, "wb")


def _environment(settings: Mapping[str, object], source: Path | None = None) -> dict[str, str]:
    """The parent's environment without its PRESENCE_* variables, plus ``settings``.

    ``settings`` maps ``section.key`` to a value as it would be written in
    config.toml (numbers, strings with units). ``source``, a directory holding
    a ``presence_actors`` package, comes first on PYTHONPATH (ahead of the
    checkout and of the editable install).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRESENCE_")}
    for key in ("REDIS_URL", "USER_STATUS_TTL", "HEARTBEAT_INTERVAL"):
        env.pop(key, None)
    for dotted, value in settings.items():
        section, name = dotted.split(".", 1)
        env[f"PRESENCE_{section.upper()}_{name.upper()}"] = str(value)
    paths = [str(source) if source else "", str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    return env


HTTP_TIMEOUT = 5.0
# A server busy with a fan-out backlog answers /metrics late; give it longer.
METRICS_TIMEOUT = 20.0


async def http_request(port: int, method: str, path: str, body: object = None) -> tuple[int, bytes]:
    """``method path`` on 127.0.0.1:port with HTTP/1.0 (a JSON body if given).

    Returns the status and the body; raises trio.TooSlowError after HTTP_TIMEOUT.
    """
    payload = b"" if body is None else orjson.dumps(body)
    head = f"{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    with trio.fail_after(HTTP_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(head.encode() + b"\r\n" + payload)
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    return int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


async def http_get(port: int, path: str) -> tuple[int, bytes]:
    return await http_request(port, "GET", path)


async def _read_lines(stream: trio.abc.ReceiveStream) -> AsyncIterator[bytes]:
    pending = b""
    while chunk := await stream.receive_some(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line


@define
class ServerProcess:
    """The server under test: its pid (for /proc), port and working directory.

    With ``server.workers`` > 1, ``pid`` is the supervisor's and ``workers`` are
    the pids of the worker processes that serve; ``companions`` are other
    processes whose work is the server's (the cluster's Redis), by name. CPU
    figures count all of them; RSS counts the server's own processes.
    """

    process: trio.Process
    pid: int
    port: int
    workdir: Path
    workers: list[int] = field(factory=list)
    companions: list[tuple[str, int]] = field(factory=list)

    @property
    def node_pids(self) -> list[int]:
        """The processes that hold connections: the workers, or the server itself."""
        return self.workers or [self.pid]

    def processes(self) -> list[tuple[str, int]]:
        """Every process of the server side, by name (``server``, or ``supervisor``
        and ``worker-1`` ..; then the companions)."""
        if not self.workers:
            return [("server", self.pid), *self.companions]
        named = [(f"worker-{i}", pid) for i, pid in enumerate(self.workers, 1)]
        return [("supervisor", self.pid), *named, *self.companions]

    def cpu_by_process(self) -> dict[str, float]:
        return {name: procstat.cpu_seconds(pid) for name, pid in self.processes()}

    def cpu_seconds(self) -> float:
        return sum(self.cpu_by_process().values())

    def rss_kb(self) -> int:
        return sum(procstat.rss_kb(pid) for pid in (self.pid, *self.workers))

    async def terminate(self) -> tuple[float, int | None]:
        """SIGTERM, then wait up to SERVER_STOP_TIMEOUT: the seconds the stop took
        and the exit status (None: it did not stop in time and was killed)."""
        started = time.monotonic()
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(SERVER_STOP_TIMEOUT):
            await self.process.wait()
        seconds = time.monotonic() - started
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
            return seconds, None
        return seconds, self.process.returncode

    async def metrics(self) -> Scrape | None:
        """``/metrics`` parsed, or None when an overloaded server does not answer in time."""
        with trio.move_on_after(METRICS_TIMEOUT):
            try:
                status, body = await http_get(self.port, "/metrics")
            except trio.TooSlowError:
                return None
            if status != 200:
                raise BenchError(f"/metrics answered {status}")
            values = {}
            for line in body.decode().splitlines():
                if line and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    values[name] = float(value)
            return Scrape(time.time(), values)
        return None


@frozen
class Scrape:
    """``/metrics`` as ``{"name{labels}": value}`` and when the answer came (unix s)."""

    at: float
    values: dict[str, float]

    def rate_since(self, before: Scrape, name: str) -> float:
        """Per-second increase of ``name`` between two scrapes (answer times: approximate)."""
        delta = self.values.get(name, 0.0) - before.values.get(name, 0.0)
        return delta / max(self.at - before.at, 1e-9)


@asynccontextmanager
async def open_server_process(
    settings: Mapping[str, object],
    workdir: Path,
    *,
    core: int = 0,
    source: Path | None = None,
    check_exit: bool = True,
    companions: Sequence[tuple[str, int]] = (),
) -> AsyncIterator[ServerProcess]:
    """Run ``bench/server_main.py`` pinned to ``core`` until the block exits.

    The database and the log file live in ``workdir`` and the port is chosen by
    the OS unless ``settings`` says otherwise; ``source`` is a directory whose
    ``presence_actors`` package the server runs instead of the checkout's.
    Yields once ``GET /readyz`` says 200. On exit the server gets SIGTERM and
    must exit 0 within SERVER_STOP_TIMEOUT, else it is killed and BenchError
    is raised (unless the block already raised). With ``check_exit=False``
    the block owns the verdict: a server the block killed or stopped itself
    (``burst``'s kill -9, ``stall``'s timed SIGTERM) is only reaped, and one
    still running is stopped the same way without the check. With
    ``server.workers`` > 1 in ``settings`` the server is a supervisor: its workers
    are found as its children once it is ready. ``companions`` are counted with
    the server (see ServerProcess).
    """
    full = {
        "server.port": 0,
        "persistence.path": str(workdir / "presence.db"),
        "logging.file": str(workdir / "server.log"),
        **settings,
    }
    argv = pinned(core, sys.executable, str(BENCH / "server_main.py"))
    with log_file(workdir / "server.stderr") as stderr:
        process = await trio.lowlevel.open_process(
            argv,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_environment(full, source),
            cwd=workdir,
        )
    try:
        assert process.stdout is not None
        with trio.move_on_after(SERVER_READY_TIMEOUT) as waited:
            async for line in _read_lines(process.stdout):
                hello = orjson.loads(line)
                break
            else:
                raise BenchError(f"the server exited early; see {workdir / 'server.stderr'}")
            server = ServerProcess(
                process, hello["pid"], hello["port"], workdir, companions=list(companions)
            )
            expected = int(str(full.get("server.workers", 1)))
            if expected > 1:
                server.workers = await _find_workers(server.pid, expected)
            # Another process's state: nothing to wait on but its answer.
            while (await http_get(server.port, "/readyz"))[0] != 200:  # noqa: ASYNC110
                await trio.sleep(0.05)
        if waited.cancelled_caught:
            raise BenchError(f"the server was not ready in {SERVER_READY_TIMEOUT} s")
        yield server
    except BaseException:
        with trio.CancelScope(shield=True):
            await _stop(process, check=False)
        raise
    else:
        with trio.CancelScope(shield=True):
            await _stop(process, check=check_exit)


async def _find_workers(supervisor: int, expected: int) -> list[int]:
    """The pids of the supervisor's ``expected`` workers (its children; they all
    serve once it said so)."""
    from bench.nodes import children

    found: list[int] = []
    with trio.move_on_after(SERVER_READY_TIMEOUT):
        # Another process's state: nothing to wait on but /proc.
        while len(found := children(supervisor)) != expected:  # noqa: ASYNC110
            await trio.sleep(0.05)
    if len(found) != expected:
        raise BenchError(f"the supervisor has {len(found)} worker processes, not {expected}")
    return sorted(found, key=_worker_index)


def _worker_index(pid: int) -> int:
    """The ``--worker I`` a worker process was started with (its node name has it)."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return int(argv[argv.index(b"--worker") + 1]) if b"--worker" in argv else 0


async def _stop(process: trio.Process, *, check: bool) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(SERVER_STOP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()
        if check:
            raise BenchError(f"the server did not stop within {SERVER_STOP_TIMEOUT} s of SIGTERM")
    if check and process.returncode != 0:
        raise BenchError(f"the server exited {process.returncode} after SIGTERM")


@define
class WorkerProcess:
    """One load-generator process; its latest ``progress`` and its final events."""

    name: str
    process: trio.Process
    spec: Mapping[str, Any]
    progress: dict[str, Any] = field(factory=dict)
    connected: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    connected_event: trio.Event = field(factory=trio.Event)
    result_event: trio.Event = field(factory=trio.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def role(self) -> str:
        return str(self.spec["role"])

    @property
    def rate_share(self) -> float:
        """The share of a scenario's change rate this worker's users make (0: none)."""
        return float(self.spec.get("rate_share", 0.0))

    @property
    def samples(self) -> str | None:
        """The prefix of the files where a watcher leaves its latency samples."""
        return self.spec.get("samples")

    def cpu_seconds(self) -> float:
        return procstat.cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return procstat.rss_kb(self.pid)

    async def command(self, cmd: str, **fields: Any) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(orjson.dumps({"cmd": cmd, **fields}) + b"\n")

    async def listen(self) -> None:
        """Follow the worker's events until it exits (run it in a nursery)."""
        assert self.process.stdout is not None
        async for line in _read_lines(self.process.stdout):
            event = orjson.loads(line)
            kind = event.pop("ev")
            self.progress = event
            if kind == "connected":
                self.connected = event
                self.connected_event.set()
            elif kind == "result":
                self.result = event
                self.result_event.set()
        # EOF: whatever was awaited will not come.
        self.connected_event.set()
        self.result_event.set()


@asynccontextmanager
async def open_worker(
    nursery: trio.Nursery,
    name: str,
    spec: Mapping[str, Any],
    workdir: Path,
    *,
    core: int = 1,
    script: str = "loadgen.py",
) -> AsyncIterator[WorkerProcess]:
    """Run ``bench/<script>`` (the WebSocket load generator unless told otherwise;
    ``queryload.py`` speaks the same JSON lines) pinned to ``core`` with
    ``spec``; it connects at once.

    Its events are read by a task in ``nursery`` (which ends when the worker
    exits). On exit the worker's stdin is closed (it stops and exits) and it is
    killed if still there after WORKER_STOP_TIMEOUT.
    """
    argv = pinned(core, sys.executable, str(BENCH / script))
    with log_file(workdir / f"{name}.stderr") as stderr:
        process = await trio.lowlevel.open_process(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=_environment({}),
            cwd=workdir,
        )
    worker = WorkerProcess(name, process, spec)
    assert process.stdin is not None
    try:
        nursery.start_soon(worker.listen)
        await process.stdin.send_all(orjson.dumps(dict(spec)) + b"\n")
        yield worker
    finally:
        with trio.CancelScope(shield=True):
            await process.stdin.aclose()
            with trio.move_on_after(WORKER_STOP_TIMEOUT):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


@asynccontextmanager
async def open_workers(
    nursery: trio.Nursery,
    specs: Sequence[Mapping[str, Any]],
    workdir: Path,
    *,
    core: int = 1,
    script: str = "loadgen.py",
) -> AsyncIterator[list[WorkerProcess]]:
    """One worker per spec, named ``<role>-<i>``, all pinned to ``core``; see open_worker."""
    async with AsyncExitStack() as stack:
        workers = [
            await stack.enter_async_context(
                open_worker(nursery, f"{spec['role']}-{i}", spec, workdir, core=core, script=script)
            )
            for i, spec in enumerate(specs)
        ]
        yield workers


async def stop_workers(workers: list[WorkerProcess]) -> None:
    """Tell every worker to stop and wait for their results.

    BenchError if one has none within WORKER_STOP_TIMEOUT.
    """
    for worker in workers:
        await worker.command("stop")
    with trio.move_on_after(WORKER_STOP_TIMEOUT):
        for worker in workers:
            await worker.result_event.wait()
    missing = [w.name for w in workers if w.result is None]
    if missing:
        raise BenchError(f"no result from worker(s) {', '.join(missing)}; see their .stderr")
