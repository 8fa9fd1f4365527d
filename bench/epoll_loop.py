"""What the load-generator processes share: one ``epoll`` loop, commands on stdin,
events on stdout, non-blocking sends, the kernel's receive timestamps.

A generator (``bench/loadgen.py``, ``bench/queryload.py``) subclasses
:class:`GeneratorLoop` and is started with :func:`main`: the orchestrator
(:mod:`bench.processes`) writes one JSON spec line, then JSON commands; the
generator answers with JSON event lines.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson

PROGRESS_EVERY = 0.5
RECV_SIZE = 262144
# Linux's SO_TIMESTAMPNS (the socket module does not name it): each read comes
# with the wall-clock time (CLOCK_REALTIME) its last segment reached the socket.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
CMSG_SPACE = socket.CMSG_SPACE(16)


def arrival(ancillary: list[tuple[int, int, bytes]]) -> float:
    """When the data of one read arrived: the kernel's receive timestamp.

    Unlike the time the loop got around to reading it, this does not grow
    while the generator is busy with other connections. When one read returns
    several frames, all get the last segment's time: a latency is then
    over-estimated, never under-estimated. Falls back to now without one.
    """
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack_from("qq", data)
            return float(seconds + nanoseconds / 1e9)
    return time.time()


def error_name(error: OSError) -> str:
    return str(errno.errorcode.get(error.errno or 0, error.errno))


class Endpoint(Protocol):
    """One connection of a generator: its socket and what is still to be sent."""

    sock: socket.socket | None
    out: bytes


class GeneratorLoop:
    """The parts of a generator that do not depend on what it generates.

    Subclasses set ``running = False`` to stop, implement ``_command`` and
    ``_fail`` (a connection broke: ``reason`` says how).
    """

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.running = True
        self.stdin_buf = b""

    def _command(self, command: dict[str, Any]) -> None:
        raise NotImplementedError

    def _fail(self, endpoint: Any, reason: str) -> None:
        raise NotImplementedError

    # --- sending ----------------------------------------------------------------------

    def _write(self, endpoint: Endpoint, data: bytes) -> None:
        """Send ``data`` now, or queue it behind what is queued (EPOLLOUT then flushes)."""
        if endpoint.sock is None:
            return
        if endpoint.out:
            endpoint.out += data
            return
        try:
            sent = endpoint.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._fail(endpoint, f"send: {error_name(error)}")
            return
        if sent < len(data):
            endpoint.out = data[sent:]
            self.epoll.modify(endpoint.sock.fileno(), select.EPOLLIN | select.EPOLLOUT)

    def _flush(self, endpoint: Endpoint) -> None:
        """Send what was queued (on EPOLLOUT)."""
        assert endpoint.sock is not None
        try:
            sent = endpoint.sock.send(endpoint.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._fail(endpoint, f"send: {error_name(error)}")
            return
        endpoint.out = endpoint.out[sent:]
        if not endpoint.out:
            self.epoll.modify(endpoint.sock.fileno(), select.EPOLLIN)

    # --- control ----------------------------------------------------------------------

    def _listen_to_commands(self) -> int:
        """Put stdin on the loop and run the commands that came with the spec;
        returns its fd (``_read_commands`` it when it is ready)."""
        stdin = sys.stdin.buffer.fileno()
        os.set_blocking(stdin, False)
        self.epoll.register(stdin, select.EPOLLIN)
        self._run_commands()
        return stdin

    def _read_commands(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self.running = False  # the orchestrator went away
            return
        self.stdin_buf += chunk
        self._run_commands()

    def _run_commands(self) -> None:
        *lines, self.stdin_buf = self.stdin_buf.split(b"\n")
        for line in lines:
            if line.strip():
                self._command(orjson.loads(line))

    def _emit(self, event: str, **fields: Any) -> None:
        sys.stdout.buffer.write(orjson.dumps({"ev": event, **fields}) + b"\n")
        sys.stdout.buffer.flush()

    def run(self) -> None:
        raise NotImplementedError


def main(make: Callable[[dict[str, Any]], GeneratorLoop]) -> None:
    """Read the spec line from stdin, build the generator with ``make`` and run it.

    The spec is read unbuffered: commands that follow it must stay in the pipe
    for the event loop, not in a file object's buffer.
    """
    fd = sys.stdin.buffer.fileno()
    data = b""
    while b"\n" not in data:
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        data += chunk
    line, rest = data.split(b"\n", 1)
    generator = make(orjson.loads(line))
    generator.stdin_buf = rest
    generator.run()
