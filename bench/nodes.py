"""The server's processes in a cluster run, and which of them holds which connection.

With ``server.workers = N`` the server is a supervisor and N worker processes
(its children) that share one port through ``SO_REUSEPORT``: the kernel hands each
new connection to one of them, and nothing in the protocol says which. The kernel
does: a connection's server-side socket is a descriptor of exactly one process
(``/proc/<pid>/fd``), and ``/proc/net/tcp`` gives that socket's peer port, the
client's. So the bench can count each worker's connections, tell a generator's user
which worker serves it (from the client's local port), and address a request's
answer to the worker that gave it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import trio

from bench.processes import HTTP_TIMEOUT, BenchError, Scrape

# How long a request waits for a worker to accept its connection before it is sent.
ACCEPT_TIMEOUT = 2.0
# Requests tried before a worker that never got one is given up on.
SCRAPE_ATTEMPTS = 40
_ESTABLISHED = "01"


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (any of its threads' children), ascending."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "children").read_text()
        except FileNotFoundError:
            continue
        found.update(int(child) for child in text.split())
    return sorted(found)


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    fds = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fds):
        try:
            target = os.readlink(fds / fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _tcp_entries() -> Iterable[tuple[int, int, str, int]]:
    """(local port, remote port, state, inode) of every TCP socket of this namespace."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, state, inode = fields[1], fields[2], fields[3], fields[9]
            yield (
                int(local.rsplit(":", 1)[1], 16),
                int(remote.rsplit(":", 1)[1], 16),
                state,
                int(inode),
            )


def peers_by_process(pids: Sequence[int], port: int) -> dict[int, int]:
    """Client port -> the pid (among ``pids``) holding that client's established
    connection to ``port``."""
    owner = {}
    for pid in pids:
        try:
            for inode in _socket_inodes(pid):
                owner[inode] = pid
        except FileNotFoundError:
            continue  # the process is gone
    peers = {}
    for local, remote, state, inode in _tcp_entries():
        if local == port and state == _ESTABLISHED and inode in owner:
            peers[remote] = owner[inode]
    return peers


def connections_per_process(pids: Sequence[int], port: int) -> dict[int, int]:
    """How many established connections to ``port`` each of ``pids`` holds."""
    counts = dict.fromkeys(pids, 0)
    for pid in peers_by_process(pids, port).values():
        counts[pid] += 1
    return counts


async def request_on_some_worker(
    pids: Sequence[int], port: int, path: str
) -> tuple[int, int, bytes]:
    """GET ``path`` on a new connection: (the pid that accepted it, status, body).

    The request is sent only once the kernel shows which of ``pids`` accepted the
    connection, so the answer is known to be that process's.
    """
    with trio.fail_after(HTTP_TIMEOUT + ACCEPT_TIMEOUT):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            mine = stream.socket.getsockname()[1]
            deadline = time.monotonic() + ACCEPT_TIMEOUT
            while (pid := peers_by_process(pids, port).get(mine)) is None:
                if time.monotonic() > deadline:
                    raise BenchError(f"no worker accepted a connection in {ACCEPT_TIMEOUT} s")
                await trio.sleep(0.005)
            request = f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
            await stream.send_all(request.encode())
            chunks = []
            while chunk := await stream.receive_some(65536):
                chunks.append(chunk)
    response = b"".join(chunks)
    status_line, _, rest = response.partition(b"\r\n")
    return pid, int(status_line.split(b" ", 2)[1]), rest.partition(b"\r\n\r\n")[2]


def parse_metrics(body: bytes) -> dict[str, float]:
    values = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


async def scrape_each(pids: Sequence[int], port: int) -> dict[int, Scrape]:
    """``/metrics`` of every one of ``pids`` (new connections until each answered
    one; the kernel picks the worker, so it may take a few); BenchError if one
    never got a connection within SCRAPE_ATTEMPTS."""
    scrapes: dict[int, Scrape] = {}
    for _ in range(SCRAPE_ATTEMPTS):
        pid, status, body = await request_on_some_worker(pids, port, "/metrics")
        if status != 200:
            raise BenchError(f"/metrics of process {pid} answered {status}")
        scrapes.setdefault(pid, Scrape(time.time(), parse_metrics(body)))
        if len(scrapes) == len(pids):
            return scrapes
    missing = sorted(set(pids) - set(scrapes))
    raise BenchError(f"no /metrics answer from worker(s) {missing} in {SCRAPE_ATTEMPTS} tries")
