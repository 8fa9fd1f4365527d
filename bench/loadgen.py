"""A load-generator process: many WebSocket clients on one ``epoll`` loop.

    python bench/loadgen.py < commands

The orchestrator (:mod:`bench.processes`) starts it pinned to a core, writes one
JSON spec line on stdin, then commands; the process answers with JSON lines on
stdout (``progress`` twice a second, ``connected`` once every connection was
tried, ``result`` after ``stop``) and exits.

Why not trio-websocket: it holds 5,000 connections, but costs ~2 ms of CPU per
connect and, per received message, wsproto's frame parsing (~18 us here) plus
a reader task and a memory channel per connection. A ``broadcast`` run receives
tens of thousands of pushes per second on one core. Here a received message
costs one ``recvmsg`` (often shared with other frames) into a shared buffer,
one frame header, and three byte searches instead of a JSON decode for a push;
no task switch. Arrival times are the kernel's receive timestamps
(SO_TIMESTAMPNS), so the loop's own delays do not count as server latency.

Spec fields: ``host``, ``port``, ``role`` (``idle``: connect and hold;
``watch``: record every ``user_status_change``; ``change``: make status changes
on ``start``), ``users`` (user ids, one connection each), ``concurrency``
(connections in flight before their ``welcome``), ``samples`` (file prefix for
a watcher's latency samples), ``changes`` (whether ``start`` makes these users
change status; default: only for ``change``), ``reconnect`` (bring back a
connection lost after its welcome, as a client library would), ``record_welcomes``
(report every first ``welcome``'s arrival time in the result), ``report_ports``
(the ``connected`` event maps each welcomed user to its connection's local port,
which tells the orchestrator which server process holds it). Commands:
``{"cmd": "start", "t0", "w0", "w1", "rate"}`` (unix seconds: changes run from
t0 to w1, the measured window is [w0, w1)), ``{"cmd": "stop"}``.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import heapq
import random
import select
import socket
import sys
import time
from array import array
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import epoll_loop, wire
from bench.epoll_loop import (
    CMSG_SPACE,
    PROGRESS_EVERY,
    RECV_SIZE,
    SO_TIMESTAMPNS,
    GeneratorLoop,
    arrival,
    error_name,
)

# Changes are tagged with the send time in statusMessage, so watchers also get
# an end-to-end latency (client send -> push arrival), not only the server's.
TAG = "bench "
# Seconds between attempts to reconnect while the server refuses (x0.5-1.5).
RETRY_BACKOFF = 0.25
_STATUSES = ("busy", "online")
_PUSH_TYPE = b'"type":"user_status_change"'
_TIMESTAMP = b'"timestamp":"'
_TAG = b'"statusMessage":"' + TAG.encode()
_USER_ID = b'"userId":"'


class Conn:
    """One WebSocket client connection and where it is in its life."""

    __slots__ = (
        "accept",
        "buf",
        "index",
        "next_beat",
        "out",
        "retrying",
        "sock",
        "state",
        "user_id",
        "welcomed",
    )

    CONNECTING, HANDSHAKE, OPEN, CLOSED = range(4)

    def __init__(self, index: int, user_id: str) -> None:
        self.index = index
        self.user_id = user_id
        self.sock: socket.socket | None = None
        self.state = Conn.CONNECTING
        self.buf = bytearray()
        self.out = b""
        self.accept = b""
        self.welcomed = False
        # When this connection's next heartbeat is due; a heap entry for any
        # other time is stale (left from before a reconnect) and ignored.
        self.next_beat = 0.0
        # Lost after its welcome and trying to come back (``reconnect`` specs).
        self.retrying = False


class _Timestamps:
    """ISO-8601 ``...T..:..:..(.mmm)Z`` to unix ms, caching the whole-second part."""

    def __init__(self) -> None:
        self._seconds: dict[str, int] = {}

    def ms(self, text: str) -> float:
        head = text[:19]
        seconds = self._seconds.get(head)
        if seconds is None:
            seconds = calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S"))
            self._seconds[head] = seconds
        millis = int(text[20:23]) if len(text) > 20 and text[19] == "." else 0
        return seconds * 1000.0 + millis


class LoadGen(GeneratorLoop):
    """The event loop of one generator process; see the module docstring."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.role: str = spec["role"]
        self.concurrency: int = spec.get("concurrency", 100)
        self.samples: str | None = spec.get("samples")
        # Reconnect a connection the server closed or lost after its welcome,
        # as a client library would: at once, then with backoff while refused.
        self.reconnect: bool = spec.get("reconnect", False)
        # Whether "start" makes this process's users change status (a watcher
        # may change too: in ``fanout`` every user both changes and watches).
        self.changes: bool = spec.get("changes", self.role == "change")
        # Arrival time of each connection's first welcome (``stall``: who was
        # admitted when); off by default, it is one float per connection.
        self.record_welcomes: bool = spec.get("record_welcomes", False)
        self.welcome_times = array("d")
        self.report_ports: bool = spec.get("report_ports", False)
        self.ports: dict[str, int] = {}
        self.conns = [Conn(i, u) for i, u in enumerate(spec["users"])]
        self.by_fd: dict[int, Conn] = {}
        # One receive buffer for every connection: recv() would allocate (and
        # for large sizes mmap) a fresh buffer per call.
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.stamps = _Timestamps()
        # connecting
        self.next_connect = 0
        self.in_flight = 0
        self.connected = 0
        self.failed = 0
        self.first_attempt = 0.0
        self.last_welcome = 0.0
        self.connected_sent = False
        # what came back
        self.received = 0
        self.pushes = 0
        self.closes: Counter[str] = Counter()  # close codes and losses after welcome
        self.failures: Counter[str] = Counter()  # why connections failed before welcome
        self.errors: Counter[str] = Counter()
        self.replies: Counter[str] = Counter()
        # heartbeats: (due, index)
        self.heartbeats: list[tuple[float, int]] = []
        # reconnecting: (due, index); lost = connections lost after a welcome,
        # back = those welcomed again
        self.retries: list[tuple[float, int]] = []
        self.lost = 0
        self.back = 0
        self.first_lost = 0.0
        self.last_back = 0.0
        self.retry_attempts = 0
        self.heartbeat_interval = 15.0
        self.heartbeats_sent = 0
        # the measured window, set by "start"
        self.w0 = self.w1 = float("inf")
        self.window_pushes = 0  # pushes stamped inside the window
        self.window_arrivals = 0  # pushes that arrived inside the window
        self.window_messages = 0  # messages of any type that arrived inside the window
        self.latency = array("f")  # ms, arrival - push timestamp, stamped in window
        self.e2e = array("f")  # ms, arrival - changer's send time, stamped in window
        self.stamps_ms = array("f")  # ms, each latency sample's push timestamp - w0
        # "user@send time" (or "user@push timestamp" if untagged) of pushes stamped
        # in the window: the distinct changes pushed
        self.changes_seen: set[str] = set()
        # changing
        self.t0 = 0.0
        self.rate = 0.0
        self.change_index = 0
        self.changes_sent = 0
        self.changes_in_window = 0
        self.send_lag_max = 0.0
        self.next_progress = 0.0

    # --- the loop ------------------------------------------------------------------

    def run(self) -> None:
        stdin = self._listen_to_commands()
        by_fd = self.by_fd
        while self.running:
            now = time.time()
            self._fill_connects(now)
            timeout = self._timers(now)
            for fd, mask in self.epoll.poll(timeout, 1024):
                conn = by_fd.get(fd)
                if conn is not None:
                    self._on_ready(conn, mask)
                elif fd == stdin:
                    self._read_commands(stdin)
        self._finish()

    def _timers(self, now: float) -> float:
        """Run what is due; return how long the loop may sleep."""
        if now >= self.next_progress:
            self.next_progress = now + PROGRESS_EVERY
            self._emit("progress", **self._counts())
        wake = self.next_progress
        while self.heartbeats and self.heartbeats[0][0] <= now:
            due, index = heapq.heappop(self.heartbeats)
            conn = self.conns[index]
            if conn.state == Conn.OPEN and due == conn.next_beat:
                self._send(conn, b'{"type":"heartbeat"}')
                self.heartbeats_sent += 1
                conn.next_beat = now + self.heartbeat_interval
                heapq.heappush(self.heartbeats, (conn.next_beat, index))
        if self.heartbeats:
            wake = min(wake, self.heartbeats[0][0])
        if self.retries:
            wake = min(wake, self.retries[0][0])
        if self.rate and self.changes:
            wake = min(wake, self._changes(now))
        return max(0.0, wake - time.time())

    def _changes(self, now: float) -> float:
        """Send every change due by ``now``: change k at t0 + k/rate, changers in turn."""
        users = len(self.conns)
        while True:
            due = self.t0 + self.change_index / self.rate
            if due >= self.w1:
                self.rate = 0.0
                return float("inf")
            if due > now:
                return due
            k = self.change_index
            conn = self.conns[k % users]
            status = _STATUSES[(k // users) % 2]
            if conn.state == Conn.OPEN:
                stamp = time.time_ns()
                body = orjson.dumps(
                    {"type": "set_status", "status": status, "statusMessage": f"{TAG}{stamp}"}
                )
                self._send(conn, body)
                self.changes_sent += 1
                self.send_lag_max = max(self.send_lag_max, stamp / 1e9 - due)
            self.change_index += 1

    # --- connecting ------------------------------------------------------------------

    def _fill_connects(self, now: float) -> None:
        while self.in_flight < self.concurrency and self.next_connect < len(self.conns):
            conn = self.conns[self.next_connect]
            self.next_connect += 1
            if not self.first_attempt:
                self.first_attempt = now
            self._connect(conn)
        while self.in_flight < self.concurrency and self.retries and self.retries[0][0] <= now:
            _, index = heapq.heappop(self.retries)
            conn = self.conns[index]
            conn.state = Conn.CONNECTING
            conn.buf = bytearray()
            conn.out = b""
            self.retry_attempts += 1
            self._connect(conn)
        if not self.connected_sent and self.connected + self.failed == len(self.conns):
            self.connected_sent = True
            self._emit(
                "connected",
                first=self.first_attempt,
                last=self.last_welcome,
                failures=dict(self.failures),
                ports=self.ports,
                **self._counts(),
            )

    def _connect(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        conn.sock = sock
        self.in_flight += 1
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
            return
        self.by_fd[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def _fail(self, conn: Conn, reason: str) -> None:
        """The connection broke: a failed connect before its welcome, a loss after.

        With ``reconnect``, a loss (and every failed attempt to come back)
        schedules the next attempt instead: at once after a loss, then after
        RETRY_BACKOFF seconds (with jitter) while the server refuses.
        """
        if conn.state == Conn.CLOSED:
            return
        if self.reconnect and (conn.welcomed or conn.retrying):
            now = time.time()
            if conn.welcomed:
                conn.welcomed = False
                conn.retrying = True
                self.lost += 1
                self.first_lost = self.first_lost or now
                self.closes[reason] += 1
                delay = 0.0
            else:
                self.in_flight -= 1
                delay = RETRY_BACKOFF * random.uniform(0.5, 1.5)
            self._drop(conn)
            heapq.heappush(self.retries, (now + delay, conn.index))
            return
        if not conn.welcomed:
            self.in_flight -= 1
            self.failed += 1
            self.failures[reason] += 1
        else:
            self.closes[reason] += 1
        self._drop(conn)

    def _drop(self, conn: Conn) -> None:
        if conn.sock is not None:
            fd = conn.sock.fileno()
            self.by_fd.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
            conn.sock.close()
            conn.sock = None
        conn.state = Conn.CLOSED

    # --- I/O -------------------------------------------------------------------------

    def _on_ready(self, conn: Conn, mask: int) -> None:
        sock = conn.sock
        if sock is None:
            return
        if conn.state == Conn.CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(conn, f"connect: {errno.errorcode.get(code, code)}")
                return
            path = f"/ws?userId={conn.user_id}&deviceId=bench"
            request, conn.accept = wire.upgrade_request(self.host, self.port, path)
            conn.state = Conn.HANDSHAKE
            self.epoll.modify(sock.fileno(), select.EPOLLIN)
            self._send(conn, request, framed=False)
            return
        if mask & select.EPOLLOUT and conn.out:
            self._flush(conn)
        if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            try:
                size, ancillary, _, _ = sock.recvmsg_into([self.rbuf], CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:
                self._fail(conn, f"recv: {error_name(error)}")
                return
            if not size:
                self._fail(conn, "eof")
                return
            arrived = arrival(ancillary)
            if conn.state == Conn.OPEN and not conn.buf:
                # The usual case: frames straight from the shared buffer, no copy.
                used = self._on_frames(conn, self.rbuf, size, arrived)
                if used < size and conn.state == Conn.OPEN:
                    conn.buf += self.rview[used:size]
                return
            conn.buf += self.rview[:size]
            if conn.state == Conn.HANDSHAKE:
                try:
                    start = wire.split_response(conn.buf, conn.accept)
                except wire.HandshakeError as error:
                    self._fail(conn, f"handshake: {error}")
                    return
                if start is None:
                    return
                del conn.buf[:start]
                conn.state = Conn.OPEN
            used = self._on_frames(conn, conn.buf, len(conn.buf), arrived)
            del conn.buf[:used]

    def _on_frames(self, conn: Conn, buf: bytearray, end: int, now: float) -> int:
        """Handle the complete frames in ``buf[:end]``; how many bytes they took."""
        pos = 0
        in_window = self.w0 <= now < self.w1
        while True:
            frame = wire.frame_at(buf, pos, end)
            if frame is None:
                return pos
            opcode, start, pos = frame
            if opcode == wire.OP_TEXT:
                self.received += 1
                if in_window:
                    self.window_messages += 1
                if not self._on_push(buf, start, pos, now, in_window):
                    self._on_message(conn, orjson.loads(buf[start:pos]), now)
            elif opcode == wire.OP_CLOSE:
                payload = bytes(buf[start:pos])
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send(conn, wire.close_frame(code), framed=False)
                self._fail(conn, str(code))
                return end
            elif opcode == wire.OP_PING:
                self._send(
                    conn, wire.client_frame(bytes(buf[start:pos]), wire.OP_PONG), framed=False
                )

    def _on_push(self, buf: bytearray, start: int, end: int, now: float, in_window: bool) -> bool:
        """Record a ``user_status_change`` read straight from its bytes; False if not one.

        Pushes are the bulk of what arrives, and finding three fields in the
        JSON text costs a fraction of decoding it (compact JSON as the server
        writes it; anything else falls back to full decoding).
        """
        if buf.find(_PUSH_TYPE, start, end) < 0:
            return False
        at = buf.find(_TIMESTAMP, start, end)
        if at < 0:
            return False
        self.pushes += 1
        if in_window:
            self.window_arrivals += 1
        if self.role != "watch":
            return True
        at += len(_TIMESTAMP)
        stamp = self.stamps.ms(buf[at : at + 24].decode())
        if self.w0 * 1000 <= stamp < self.w1 * 1000:
            self.window_pushes += 1
            self.latency.append(now * 1000 - stamp)
            self.stamps_ms.append(stamp - self.w0 * 1000)
            # A change is known by its user and its send time (the tag), which every
            # node of a cluster pushes alike; the push's timestamp is the pushing
            # node's own, so it only names the change when there is no tag.
            change = f"{stamp:.0f}"
            tag = buf.find(_TAG, start, end)
            if tag >= 0:
                tag += len(_TAG)
                change = buf[tag : buf.find(b'"', tag, end)].decode()
                self.e2e.append((now - int(change) / 1e9) * 1000)
            who = buf.find(_USER_ID, start, end)
            if who >= 0:
                who += len(_USER_ID)
                user = buf[who : buf.find(b'"', who, end)].decode()
                self.changes_seen.add(f"{user}@{change}")
        return True

    def _on_message(self, conn: Conn, message: dict[str, Any], now: float) -> None:
        kind = message.get("type")
        if kind == "user_status_change":
            self.pushes += 1
            if self.w0 <= now < self.w1:
                self.window_arrivals += 1
            if self.role != "watch":
                return
            stamp = self.stamps.ms(message["timestamp"])
            if self.w0 * 1000 <= stamp < self.w1 * 1000:
                self.window_pushes += 1
                self.latency.append(now * 1000 - stamp)
                self.stamps_ms.append(stamp - self.w0 * 1000)
                note = message.get("statusMessage") or ""
                if note.startswith(TAG):
                    self.e2e.append((now - int(note[len(TAG) :]) / 1e9) * 1000)
        elif kind == "welcome":
            conn.welcomed = True
            self.in_flight -= 1
            if conn.retrying:
                conn.retrying = False
                self.back += 1
                self.last_back = now
            else:
                self.connected += 1
                self.last_welcome = now
                if self.record_welcomes:
                    self.welcome_times.append(now)
                if self.report_ports and conn.sock is not None:
                    self.ports[conn.user_id] = conn.sock.getsockname()[1]
            interval = float(message.get("heartbeatInterval") or self.heartbeat_interval)
            self.heartbeat_interval = interval
            # Phases spread over the whole interval: the heartbeats of all the
            # connections come at a steady rate of N per interval from the start.
            conn.next_beat = now + interval * random.uniform(0.05, 1.0)
            heapq.heappush(self.heartbeats, (conn.next_beat, conn.index))
        elif kind == "error":
            self.errors[str(message.get("code"))] += 1
        else:
            self.replies[str(kind)] += 1
            if kind == "status_updated":
                stamp = self.stamps.ms(message["timestamp"])
                if self.w0 * 1000 <= stamp < self.w1 * 1000:
                    self.changes_in_window += 1

    def _send(self, conn: Conn, data: bytes, *, framed: bool = True) -> None:
        self._write(conn, wire.client_frame(data) if framed else data)

    def _command(self, command: dict[str, Any]) -> None:
        if command["cmd"] == "start":
            self.t0, self.w0, self.w1 = command["t0"], command["w0"], command["w1"]
            self.rate = float(command.get("rate") or 0.0)
        elif command["cmd"] == "stop":
            self.running = False

    def _counts(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "failed": self.failed,
            "received": self.received,
            "pushes": self.pushes,
            "changes_sent": self.changes_sent,
            "heartbeats_sent": self.heartbeats_sent,
            "lost": self.lost,
            "back": self.back,
            "first_lost": self.first_lost,
            "last_back": self.last_back,
            "retry_attempts": self.retry_attempts,
        }

    def _result_fields(self) -> dict[str, Any]:
        """What a subclass adds to the ``result`` event."""
        return {}

    def _finish(self) -> None:
        if self.samples:
            with open(self.samples + ".latency", "wb") as file:
                self.latency.tofile(file)
            with open(self.samples + ".e2e", "wb") as file:
                self.e2e.tofile(file)
            with open(self.samples + ".stamp", "wb") as file:
                self.stamps_ms.tofile(file)
        open_now = sum(1 for c in self.conns if c.state == Conn.OPEN)
        self._emit(
            "result",
            **self._counts(),
            open=open_now,
            closes=dict(self.closes),
            failures=dict(self.failures),
            errors=dict(self.errors),
            replies=dict(self.replies),
            window_pushes=self.window_pushes,
            window_arrivals=self.window_arrivals,
            window_messages=self.window_messages,
            changes_in_window=self.changes_in_window,
            changes_seen=sorted(self.changes_seen),
            send_lag_max_ms=self.send_lag_max * 1000,
            first=self.first_attempt,
            welcome_times=list(self.welcome_times),
            **self._result_fields(),
        )
        for conn in self.conns:
            if conn.state == Conn.OPEN:
                self._send(conn, wire.close_frame(1000), framed=False)
            self._drop(conn)


def main() -> None:
    epoll_loop.main(LoadGen)


if __name__ == "__main__":
    main()
