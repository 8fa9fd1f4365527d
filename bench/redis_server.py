"""The Redis of a cluster run: one the bench starts itself (``--redis auto``) or one given.

``auto`` starts ``redis-server`` (Debian's package) on a free loopback port, in a
directory of the run, with no persistence (no RDB, no AOF: what the bench measures
is the cluster's traffic, not the disk), pinned to a core like the server; it is
stopped by its pid when the block ends, however it ends. The same code as
``tests/redis_harness.py`` in spirit, without pytest.

What the figures read from Redis goes through ``redis-cli`` (the official client,
outside the code under test): ``INFO commandstats`` (calls and microseconds per
command since the start), ``INFO memory``, ``DBSIZE``.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit

import trio
from attrs import frozen

from bench import procstat
from bench.processes import BenchError, log_file, pinned

REDIS_SERVER = "redis-server"
REDIS_CLI = "redis-cli"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 10.0
# A free port can be taken by someone else before redis-server binds it.
PORT_ATTEMPTS = 5
_READY = "Ready to accept connections"
_IN_USE = "Address already in use"


@frozen
class RedisProcess:
    """Where the run's Redis is; ``pid`` is None for a Redis the bench did not start
    (its CPU is then not counted: it may not even be on this machine)."""

    host: str
    port: int
    pid: int | None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def cpu_seconds(self) -> float:
        return 0.0 if self.pid is None else procstat.cpu_seconds(self.pid)

    def rss_kb(self) -> int:
        return 0 if self.pid is None else procstat.rss_kb(self.pid)


def parse_target(url: str) -> tuple[str, int]:
    """``redis://host:port`` -> (host, port); BenchError naming what is wrong."""
    parsed = urlsplit(url)
    if parsed.scheme != "redis" or not parsed.hostname or "," in url:
        raise BenchError(f"--redis {url!r}: expected redis://host:port or auto")
    return parsed.hostname, parsed.port or 6379


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def open_redis(
    spec: str | None, workdir: Path, *, core: int, flush: bool = False
) -> AsyncIterator[RedisProcess | None]:
    """The run's Redis: None without ``spec``; a new ``redis-server`` pinned to
    ``core`` for ``auto``; else the one at the URL, which must be empty (DBSIZE 0)
    unless ``flush`` (then it is emptied with FLUSHALL first: give the bench a
    Redis of its own)."""
    if spec is None:
        yield None
        return
    if spec != "auto":
        host, port = parse_target(spec)
        given = RedisProcess(host, port, None)
        keys = int((await cli(given, "dbsize")).strip() or 0)
        if keys and not flush:
            raise BenchError(
                f"Redis at {given.url} holds {keys} keys; the bench needs an empty one"
                " (--flush-redis empties it first)"
            )
        if keys:
            await cli(given, "flushall")
        yield given
        return
    if shutil.which(REDIS_SERVER) is None:
        raise BenchError("--redis auto needs redis-server (Debian package redis-server)")
    directory = workdir / "redis"
    directory.mkdir()
    for attempt in range(PORT_ATTEMPTS):
        port = _free_port()
        log = directory / f"redis-{attempt}.log"
        argv = pinned(
            core,
            REDIS_SERVER,
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory)),
            *("--logfile", str(log), "--daemonize", "no", "--protected-mode", "no"),
            *("--save", "", "--appendonly", "no"),
        )
        with log_file(directory / "redis.stderr") as stderr:
            process = await trio.lowlevel.open_process(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
            )
        try:
            with trio.move_on_after(STARTUP_TIMEOUT) as waited:
                while _READY not in (text := _read(log)):
                    if process.poll() is not None:
                        break
                    await trio.sleep(0.02)
            if process.poll() is not None:
                if _IN_USE in text and attempt < PORT_ATTEMPTS - 1:
                    continue
                raise BenchError(f"redis-server exited {process.returncode}: {text[-500:]}")
            if waited.cancelled_caught:
                raise BenchError(f"redis-server was not ready in {STARTUP_TIMEOUT} s; see {log}")
            yield RedisProcess("127.0.0.1", port, process.pid)
            return
        finally:
            with trio.CancelScope(shield=True):
                await _stop(process)
    raise BenchError("no free port for redis-server")


async def _stop(process: trio.Process) -> None:
    """SIGTERM (no persistence: it exits at once), SIGKILL after STOP_TIMEOUT."""
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    with trio.move_on_after(STOP_TIMEOUT):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


async def cli(redis: RedisProcess, *args: str) -> str:
    """``redis-cli -h HOST -p PORT ARGS``'s output, within CLI_TIMEOUT."""
    argv = [REDIS_CLI, "-h", redis.host, "-p", str(redis.port), *args]
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"redis-cli {' '.join(args)} failed: {done.stderr.decode()[:200]}")
    return done.stdout.decode()


@frozen
class CommandStats:
    """``INFO commandstats`` at one moment: command -> (calls, microseconds)."""

    commands: dict[str, tuple[int, int]]

    @classmethod
    def parse(cls, text: str) -> CommandStats:
        commands = {}
        for line in text.splitlines():
            # cmdstat_evalsha:calls=12,usec=345,usec_per_call=28.75,rejected_calls=0,...
            if not line.startswith("cmdstat_"):
                continue
            name, _, fields = line[len("cmdstat_") :].partition(":")
            values = dict(item.split("=", 1) for item in fields.split(",") if "=" in item)
            commands[name] = (int(values.get("calls", 0)), int(values.get("usec", 0)))
        return cls(commands)

    def since(self, before: CommandStats) -> dict[str, tuple[int, int]]:
        """Calls and microseconds per command between two readings (those that ran)."""
        out = {}
        for name, (calls, usec) in self.commands.items():
            calls0, usec0 = before.commands.get(name, (0, 0))
            if calls > calls0:
                out[name] = (calls - calls0, usec - usec0)
        return dict(sorted(out.items(), key=lambda item: -item[1][1]))


async def command_stats(redis: RedisProcess) -> CommandStats:
    return CommandStats.parse(await cli(redis, "info", "commandstats"))


async def used_memory(redis: RedisProcess) -> int:
    """Bytes Redis allocated for its data (``used_memory`` of ``INFO memory``)."""
    for line in (await cli(redis, "info", "memory")).splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise BenchError("INFO memory has no used_memory")
