"""What one isolated small message costs a server process before any application code.

Heartbeats arrive one at a time (10,000 connections at 15 s are one every 1.5 ms),
so each wakes the server: the kernel's wake-up, an ``epoll_wait`` that returns one
event, a read, a write of the answer to a loopback peer. This measures that floor
on this machine with two servers that do nothing but answer each read with a
fixed 82-byte frame:

- ``epoll``: one level-triggered ``select.epoll`` loop, no trio;
- ``trio``: one trio task per connection that waits with
  ``trio.lowlevel.wait_readable`` and answers (the direct path's shape, without
  parsing, the engine or the session);
- ``reactor``: inside trio, one task for all connections, waiting on a private
  level-triggered epoll (each socket registered once) and answering every ready
  socket in turn: no task switch and no re-arming per message.

A client process on the other core opens ``--connections`` connections and sends
``--rate`` small frames a second round-robin (evenly spaced), reading the
answers; the server's CPU (user + system, all threads) over ``--seconds`` divided
by the messages sent is the figure. ``--tick S`` makes the ``epoll`` server sleep
S seconds before each wait (coalescing wake-ups: what a latency of up to S buys).

Run: ``python bench/wake_floor.py`` (server on core 0, client on core 1, ~1 minute).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
import selectors
import socket
import subprocess
import sys
import time
from functools import partial

import trio

ANSWER = b"\x81\x50" + b"a" * 0x50
GREETING = b"HTTP/1.1 101 Switching Protocols\r\n\r\nwelcome"
MESSAGE = b"\x81\x94\x37\xfa\x21\x3d" + b"m" * 0x14


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def client(port: int, connections: int, rate: float, seconds: float) -> None:
    """Connect, report, wait for a line on stdin, send for ``seconds``, report, exit."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"GET /ws HTTP/1.1\r\n\r\n")
        data = b""
        while b"welcome" not in data:
            data += sock.recv(65536)
        sock.setblocking(False)
        socks.append(sock)
    print("connected", flush=True)
    sys.stdin.readline()
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    sent = answered = 0
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < seconds:
        while sent < int(elapsed * rate):
            socks[sent % connections].send(MESSAGE)
            sent += 1
        for key, _ in selector.select(max(0.0, (sent + 1) / rate - elapsed)):
            with contextlib.suppress(BlockingIOError):
                answered += key.fileobj.recv(65536).count(b"\x81\x50")  # type: ignore[union-attr]
    print(f"done {sent} {answered}", flush=True)


def start_client(args: argparse.Namespace, port: int) -> subprocess.Popen[bytes]:
    argv = [sys.executable, __file__, "--client", str(port)]
    argv += ["--connections", str(args.connections), "--rate", str(args.rate)]
    argv += ["--seconds", str(args.seconds)]
    return subprocess.Popen(
        ["taskset", "-c", str(args.client_core), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def report(name: str, used: float, args: argparse.Namespace, line: bytes) -> None:
    sent = int(line.split()[1])
    print(
        f"{name:>6}: {used / sent * 1e6:6.1f} us server CPU per message"
        f" ({args.rate:g}/s over {args.connections} connections, {used / args.seconds:.3f} core)"
    )


def run_epoll(args: argparse.Namespace) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=1024)
    poller = select.epoll()
    poller.register(listener.fileno(), select.EPOLLIN)
    proc = start_client(args, listener.getsockname()[1])
    assert proc.stdout is not None
    assert proc.stdin is not None
    os.set_blocking(proc.stdout.fileno(), False)
    buffer = memoryview(bytearray(65536))
    socks: dict[int, tuple[socket.socket, list[bool]]] = {}
    out = b""
    started: float | None = None
    while b"done" not in out:
        if args.tick and started is not None:
            time.sleep(args.tick)
        for fd, _ in poller.poll(0.05):
            if fd == listener.fileno():
                sock, _ = listener.accept()
                socks[sock.fileno()] = (sock, [False])
                poller.register(sock.fileno(), select.EPOLLIN)
                continue
            sock, upgraded = socks[fd]
            if not os.readv(fd, (buffer,)):
                poller.unregister(fd)
                continue
            if upgraded[0]:
                os.write(fd, ANSWER)
            else:
                sock.sendall(GREETING)
                upgraded[0] = True
        with contextlib.suppress(BlockingIOError):
            out += os.read(proc.stdout.fileno(), 65536)
        if b"connected" in out and started is None:
            time.sleep(1)
            started = cpu_seconds()
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
    assert started is not None
    report(
        f"epoll{'+tick' if args.tick else ''}", cpu_seconds() - started, args, out.split(b"done")[1]
    )
    proc.wait()


async def run_trio(args: argparse.Namespace, *, reactor: bool) -> None:
    buffer = memoryview(bytearray(65536))
    poller = select.epoll()

    async def react() -> None:
        # One task for every connection: it waits on a private epoll (each socket
        # registered once, level-triggered) and answers every ready socket in turn.
        while True:
            await trio.lowlevel.wait_readable(poller.fileno())
            for fd, _ in poller.poll(0):
                if not os.readv(fd, (buffer,)):
                    poller.unregister(fd)
                    continue
                os.write(fd, ANSWER)

    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(GREETING)
        sock = stream.socket
        if reactor:
            # The reactor serves it; this task only keeps the stream open (trio's
            # serve_listeners closes it when the handler returns), parked for free.
            poller.register(sock.fileno(), select.EPOLLIN)
            await trio.sleep_forever()
        while True:
            await trio.lowlevel.wait_readable(sock)
            if not os.readv(sock.fileno(), (buffer,)):
                return
            os.write(sock.fileno(), ANSWER)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=1024)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        if reactor:
            nursery.start_soon(react)
        argv = [sys.executable, __file__, "--client", str(listeners[0].socket.getsockname()[1])]
        argv += ["--connections", str(args.connections), "--rate", str(args.rate)]
        argv += ["--seconds", str(args.seconds)]
        proc = await trio.lowlevel.open_process(
            ["taskset", "-c", str(args.client_core), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        assert proc.stdin is not None
        out = b""
        while b"connected" not in out:
            out += await proc.stdout.receive_some()
        await trio.sleep(1)
        started = cpu_seconds()
        await proc.stdin.send_all(b"go\n")
        out = b""
        while b"done" not in out:
            out += await proc.stdout.receive_some()
        name = "reactor" if reactor else "trio"
        report(name, cpu_seconds() - started, args, out.split(b"done")[1])
        await proc.wait()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=667.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--tick", type=float, default=0.0)
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--client", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client is not None:
        client(args.client, args.connections, args.rate, args.seconds)
        return
    os.sched_setaffinity(0, {args.server_core})
    run_epoll(args)
    trio.run(partial(run_trio, args, reactor=False))
    trio.run(partial(run_trio, args, reactor=True))


if __name__ == "__main__":
    main()
