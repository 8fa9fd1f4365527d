"""Real Redis for tests: ``redis-server`` processes (Debian's package) on free loopback
ports, a 3-master Redis Cluster, and the faults tests need: stop, kill -9, freeze and
thaw, restart on the same port (empty, or from its AOF), and a TCP proxy that can
blackhole a connection and heal it.

Every server lives in a directory the test owns (``tmp_path``), writes nothing unless
AOF is asked for, and is killed by pid when its block ends, however it ends. Every wait
is bounded.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from itertools import count
from pathlib import Path

import pytest
import trio
from attrs import define, field

from .tcp_proxy import TcpProxy, open_tcp_proxy

__all__ = [
    "RedisCluster",
    "RedisServer",
    "TcpProxy",
    "free_port",
    "open_redis",
    "open_redis_cluster",
    "open_tcp_proxy",
    "redis_cli",
]

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli") or "redis-cli"
# Redis is up in milliseconds; a busy 2-core machine can make it seconds.
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
CLI_TIMEOUT = 5.0
# A free port can be taken by someone else before redis-server binds it.
PORT_ATTEMPTS = 5
# Cluster nodes agree on a failure after this long; Redis's default (15 s) would
# make every test of a dead or frozen cluster node wait that long.
CLUSTER_NODE_TIMEOUT_MS = 2000
_NO_REPLICAS = ("--cluster-replicas", "0")
_READY = "Ready to accept connections"
_IN_USE = "Address already in use"


class RedisStartError(Exception):
    """redis-server exited before it was ready; the message is its log."""


def free_port() -> int:
    """A loopback port nobody listens on right now (bind port 0, read it, close)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _free_ports() -> Iterator[int]:
    while True:
        yield free_port()


@define
class RedisServer:
    """One ``redis-server`` process; see :func:`open_redis`.

    ``port`` (and a cluster node's ``bus_port``) stay the same across restarts, so
    clients configured with :attr:`url` find the new process where the old one was.
    """

    directory: Path
    port: int
    appendonly: bool
    options: tuple[str, ...]
    bus_port: int | None = None
    process: trio.Process | None = None
    frozen: bool = False
    _starts: Iterator[int] = field(factory=lambda: count(1))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    async def start(self) -> None:
        """Start on :attr:`port` and return once it accepts connections (its AOF, if
        any, loaded). Raises :class:`RedisStartError` if it exits first."""
        assert not self.running, "already running"
        if REDIS_SERVER is None:
            # Like the browser tests without Chromium; .ci/run installs it.
            pytest.skip("redis-server is not installed (Debian package redis-server)")
        log = self.directory / f"redis-{next(self._starts)}.log"
        argv = [
            REDIS_SERVER,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory)),
            *("--logfile", str(log), "--daemonize", "no", "--protected-mode", "no"),
            *("--save", "", "--appendonly", "yes" if self.appendonly else "no"),
            *self._cluster_options(),
            *self.options,
        ]
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.process, self.frozen = process, False
        try:
            with trio.fail_after(STARTUP_TIMEOUT):
                while _READY not in (text := _read(log)):
                    if process.poll() is not None:
                        raise RedisStartError(text or f"redis-server exited {process.returncode}")
                    await trio.sleep(0.01)
        except BaseException:
            await self._reap(signal.SIGKILL)
            raise

    def _cluster_options(self) -> list[str]:
        if self.bus_port is None:
            return []
        return [
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-port", str(self.bus_port)),
            *("--cluster-node-timeout", str(CLUSTER_NODE_TIMEOUT_MS)),
        ]

    async def stop(self, signum: int = signal.SIGTERM) -> int:
        """Send ``signum`` (a frozen server is thawed so that it can act on it) and
        return its exit status. SIGTERM is a clean shutdown, SIGKILL a crash."""
        assert self.process is not None, "not running"
        return await self._reap(signum)

    async def kill(self) -> int:
        return await self.stop(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process holds its connections open and answers nothing."""
        assert self.running, "not running"
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """SIGCONT: it answers again, everything that queued up meanwhile first."""
        assert self.process is not None, "not running"
        self.process.send_signal(signal.SIGCONT)
        self.frozen = False

    async def restart(self, *, from_aof: bool = False) -> None:
        """Kill the process if it runs, then start again on the same port: empty, or
        with what its append-only file holds (``from_aof``, needs ``appendonly``).

        A cluster node keeps its ``nodes.conf`` either way: it is the node's identity
        and slot map, not data, so the node rejoins its cluster owning its slots.
        """
        assert not from_aof or self.appendonly, "from_aof needs appendonly=True"
        if self.running:
            await self.kill()
        if not from_aof:
            shutil.rmtree(self.directory / "appendonlydir", ignore_errors=True)
            (self.directory / "dump.rdb").unlink(missing_ok=True)
        for attempt in range(PORT_ATTEMPTS):
            try:
                await self.start()
                return
            except RedisStartError as exc:
                # The old process's port can linger a moment for a new listener.
                if _IN_USE not in str(exc) or attempt == PORT_ATTEMPTS - 1:
                    raise
                await trio.sleep(0.2)

    async def _reap(self, signum: int) -> int:
        process = self.process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signum)
            if self.frozen:
                process.send_signal(signal.SIGCONT)
        self.frozen = False
        # Shielded: a cancelled test still reaps what it started.
        with trio.fail_after(STOP_TIMEOUT, shield=True):
            return await process.wait()

    async def close(self) -> None:
        """Kill by pid if still running; safe to call twice."""
        if self.running:
            await self._reap(signal.SIGKILL)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""


async def _start_on_free_ports(
    directory: Path,
    *,
    appendonly: bool,
    cluster: bool,
    options: Iterable[str],
    ports: Iterator[int],
) -> RedisServer:
    """A started server on the first ports of ``ports`` that are still free when it binds."""
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a test's tmp dir)
    for attempt in range(PORT_ATTEMPTS):
        server = RedisServer(
            directory,
            next(ports),
            appendonly,
            tuple(options),
            bus_port=next(ports) if cluster else None,
        )
        try:
            await server.start()
            return server
        except RedisStartError as exc:
            if _IN_USE not in str(exc) or attempt == PORT_ATTEMPTS - 1:
                raise
    raise AssertionError("unreachable")


@asynccontextmanager
async def open_redis(
    directory: Path,
    *,
    appendonly: bool = False,
    options: Iterable[str] = (),
    ports: Iterator[int] | None = None,
) -> AsyncIterator[RedisServer]:
    """A ``redis-server`` on a free loopback port, data in ``directory``, ready.

    No persistence unless ``appendonly`` (then ``appendonly yes``, fsync every
    second: what a kill -9 leaves is what reached the file). ``options`` are extra
    ``--name value`` arguments. Killed by pid when the block ends.
    """
    server = await _start_on_free_ports(
        directory,
        appendonly=appendonly,
        cluster=False,
        options=options,
        ports=_free_ports() if ports is None else ports,
    )
    try:
        yield server
    finally:
        await server.close()


@define
class RedisCluster:
    """A Redis Cluster of masters without replicas; see :func:`open_redis_cluster`."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        """Every node as a seed, the way ``cluster.redis_url`` lists them."""
        return ",".join(node.url for node in self.nodes)

    async def wait_ok(self) -> None:
        """Until every running node says ``cluster_state:ok`` (bounded by
        :data:`STARTUP_TIMEOUT`)."""
        with trio.fail_after(STARTUP_TIMEOUT):
            for node in self.nodes:
                while node.running and "cluster_state:ok" not in await redis_cli(
                    node.port, "cluster", "info"
                ):
                    await trio.sleep(0.05)


@asynccontextmanager
async def open_redis_cluster(
    directory: Path, *, masters: int = 3, appendonly: bool = False
) -> AsyncIterator[RedisCluster]:
    """``masters`` cluster-enabled servers joined by ``redis-cli --cluster create``
    (no replicas, the slots split evenly), once every node reports ``cluster_state:ok``.
    All are killed by pid when the block ends."""
    cluster = RedisCluster([])
    try:
        for number in range(masters):
            cluster.nodes.append(
                await _start_on_free_ports(
                    directory / f"node-{number}",
                    appendonly=appendonly,
                    cluster=True,
                    options=(),
                    ports=_free_ports(),
                )
            )
        addresses = [f"127.0.0.1:{node.port}" for node in cluster.nodes]
        with trio.fail_after(STARTUP_TIMEOUT):
            await trio.run_process(
                [REDIS_CLI, "--cluster", "create", *addresses, *_NO_REPLICAS, "--cluster-yes"],
                capture_stdout=True,
                capture_stderr=True,
            )
        await cluster.wait_ok()
        yield cluster
    finally:
        with trio.CancelScope(shield=True):
            for node in cluster.nodes:
                await node.close()


async def redis_cli(port: int, *args: str) -> str:
    """``redis-cli -p PORT ARGS``'s output (the official client, for checks a test makes
    outside the code under test), within :data:`CLI_TIMEOUT`."""
    with trio.fail_after(CLI_TIMEOUT):
        done = await trio.run_process(
            [REDIS_CLI, "-p", str(port), *args], capture_stdout=True, capture_stderr=True
        )
    return done.stdout.decode()
