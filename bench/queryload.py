"""Closed-loop bulk presence queries: K clients, each with one request in flight.

    python bench/queryload.py < commands

Started by ``bench/scenarios/query.py`` (through :func:`bench.processes.open_worker`
with ``script="queryload.py"``) pinned to the generator core. As in
:mod:`bench.loadgen`, one ``epoll`` loop holds every client (no threads, no
tasks), requests are built before the run, and an answer's arrival time is the
kernel's receive timestamp (``SO_TIMESTAMPNS``) of its last bytes, so the
loop's own delays are not counted as server latency.

Transports (spec ``transport``), each client on its own connection:

- ``ws``: ``get_presence {userIds, requestId}`` on a WebSocket (``/ws``, the
  client connected as its own user, RFC 6455 client from :mod:`bench.wire`);
  the answer is the ``presence`` message echoing that ``requestId``.
- ``rest``: ``GET /api/presence?ids=a,b,...`` on an HTTP/1.1 keep-alive connection.
- ``grpc``: ``presence.v1.PresenceService/GetMultipleUserStatus`` in real
  gRPC: HTTP/2 with prior knowledge (what grpcio does on a plaintext port),
  binary protobuf, one stream per call. A minimal HTTP/2 client: the request
  header block is HPACK literals built once, flow control is kept on both
  sides, SETTINGS and PING are acknowledged. The server's header blocks are
  not decoded: a call succeeded when its stream carried one gRPC message with
  the users asked for (a gRPC error is a trailers-only answer: no message).
- ``connect``: the same RPC in the Connect protocol over HTTP/1.1
  (``POST`` with ``application/proto``), as a browser or curl would call it.

A client sends a request, reads the whole answer, checks it (status, number of
users, how many of them online) and sends the next. Latency = arrival of the
answer - the wall time just before the request was sent, or before
reconnecting when the server had closed the connection (hypercorn ends an
HTTP/1.1 or HTTP/2 connection after 1,000 requests; clients reconnect).

Spec fields: ``host``, ``port``, ``transport``, ``clients`` (names: the
WebSocket clients' user ids), ``population`` (user ids to ask about), ``ids``
(per request), ``pool`` (distinct requests built per process), ``seed``,
``samples`` (file prefix for the latency samples, float32 ms). Commands:
``{"cmd": "start", "w0", "w1"}`` (unix seconds: requests go out from now until
w1, the measured window is [w0, w1)), ``{"cmd": "stop"}``. Events (JSON lines on
stdout): ``progress`` twice a second, ``connected`` once every client connected
(or failed), ``result`` after ``stop``.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import random
import select
import socket
import struct
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

# A client whose connection broke after it had been ready retries after this.
RETRY_DELAY = 0.1
# A call not answered in this long is given up (and its connection replaced).
CALL_TIMEOUT = 10.0
# How long a call still in flight when the server sent GOAWAY may take. hypercorn
# (0.18) sends GOAWAY once a connection passed keep_alive_max_requests (1,000)
# *after* accepting the call that passed it, which is then never answered;
# grpcio fails such a call with UNAVAILABLE (here after ~0.4 s).
GOAWAY_GRACE = 1.0
HEARTBEAT_INTERVAL = 15.0
TRANSPORTS = ("ws", "rest", "grpc", "connect")
GRPC_PATH = "/presence.v1.PresenceService/GetMultipleUserStatus"

# UserStatus.OFFLINE in presence.proto: every other status counts as online.
_PB_OFFLINE = 2
_WS_PRESENCE = b'"type":"presence"'
_WS_WELCOME = b'"type":"welcome"'
_JSON_USER = b'"userId":"'
_JSON_ONLINE = b'"online":true'

# HTTP/2 (RFC 9113): frame types, flags, settings.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_DATA, _HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY, _WINDOW_UPDATE = 0, 1, 3, 4, 6, 7, 8
_END_STREAM, _ACK, _END_HEADERS, _PADDED = 0x1, 0x1, 0x4, 0x8
_SETTINGS_ENABLE_PUSH, _SETTINGS_INITIAL_WINDOW = 0x2, 0x4
_MAX_WINDOW = (1 << 31) - 1
_H2_HEAD = struct.Struct("!HBBBI")  # 24-bit length as 16 + 8 bits, type, flags, stream


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def proto_request(ids: list[str]) -> bytes:
    """``GetMultipleUserStatusRequest {user_ids}`` (viewer_id empty: anonymous)."""
    out = bytearray()
    for user_id in ids:
        raw = user_id.encode()
        out += b"\x0a" + _varint(len(raw)) + raw
    return bytes(out)


def proto_users(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    """(users, online users) in a ``GetMultipleUserStatusResponse`` at ``data[pos:end]``.

    Field 1 ``success`` (varint), field 2 ``data`` (UserStatusData: ``user_id``
    = 1, ``status`` = 2, ...). Serializers write fields in number order, so an
    entry's status is read right after its id; other layouts are walked.
    ValueError on anything else.
    """
    users = online = 0
    while pos < end:
        tag = data[pos]
        if tag == 0x12:
            size, pos = _read_varint(data, pos + 1)
            stop = pos + size
            status = 0
            if data[pos] == 0x0A:
                length, at = _read_varint(data, pos + 1)
                at += length
                if at < stop and data[at] == 0x10:
                    status = data[at + 1]
            if not status:
                status = _entry_status(data, pos, stop)
            users += 1
            if status != _PB_OFFLINE:
                online += 1
            pos = stop
        elif tag == 0x08:
            _, pos = _read_varint(data, pos + 1)
        else:
            raise ValueError(f"unexpected field tag {tag:#x}")
    return users, online


def _entry_status(data: bytes | bytearray, pos: int, end: int) -> int:
    """The ``status`` field of one UserStatusData, walking all its fields (0: absent)."""
    while pos < end:
        key, pos = _read_varint(data, pos)
        wire_type = key & 7
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
            if key >> 3 == 2:
                return value
        elif wire_type == 2:
            length, pos = _read_varint(data, pos)
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
    return 0


def dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A chunked HTTP/1.1 body starting at ``buf[pos]``: (body, where it ends), or
    None while incomplete. Trailers are not expected (none are sent here)."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        start = eol + 2
        if size == 0:
            if len(buf) < start + 2:
                return None
            return b"".join(parts), start + 2
        if len(buf) < start + size + 2:
            return None
        parts.append(bytes(buf[start : start + size]))
        pos = start + size + 2


def _hpack_literal(name_index: int, value: bytes) -> bytes:
    """A header field without indexing, its name from the static table (RFC 7541 6.2.2)."""
    head = bytes([name_index]) if name_index < 15 else bytes([0x0F, name_index - 15])
    assert len(value) < 127
    return head + bytes([len(value)]) + value


def grpc_header_block(host: str, port: int) -> bytes:
    """The request headers of every call: static-table names, literal values."""
    return b"".join(
        [
            b"\x83",  # :method POST (static index 3)
            b"\x86",  # :scheme http (6)
            _hpack_literal(4, GRPC_PATH.encode()),  # :path
            _hpack_literal(1, f"{host}:{port}".encode()),  # :authority
            _hpack_literal(31, b"application/grpc"),  # content-type
            b"\x00\x02te\x08trailers",  # te: trailers (a new name)
        ]
    )


def h2_frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    size = len(payload)
    return _H2_HEAD.pack(size >> 8, size & 0xFF, kind, flags, stream) + payload


class Client:
    """One client: its connection, the request in flight and, for HTTP/2, the stream."""

    __slots__ = (
        "accept_key",
        "body",
        "buf",
        "deadline",
        "draining",
        "held",
        "index",
        "last_send",
        "name",
        "next",
        "next_stream",
        "out",
        "pending",
        "ready_once",
        "recv_used",
        "send_window",
        "sock",
        "started",
        "state",
        "stream",
        "stream_window",
        "want",
    )

    CONNECTING, HANDSHAKE, GREETING, READY, CLOSED = range(5)

    def __init__(self, index: int, name: str, first: int) -> None:
        self.index = index
        self.name = name
        self.sock: socket.socket | None = None
        self.state = Client.CLOSED
        self.buf = bytearray()
        self.out = b""
        self.accept_key = b""
        self.next = first  # pool index of the next request
        self.pending = -1  # pool index of the request in flight
        self.started = 0.0  # when the request in flight was issued
        self.deadline = 0.0  # when the request in flight is given up
        self.want = 0.0  # when the client wanted to send while (re)connecting
        self.ready_once = False
        self.last_send = 0.0
        self.draining = False  # the server will close this connection: reconnect
        # HTTP/2
        self.stream = 0
        self.next_stream = 1
        self.body = bytearray()
        self.send_window = 65535
        self.stream_window = 65535
        self.recv_used = 0
        self.held = b""  # a gRPC message waiting for the server's flow-control window


class QueryLoad(GeneratorLoop):
    """The event loop of one query generator process; see the module docstring."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__()
        self.host: str = spec["host"]
        self.port: int = spec["port"]
        self.transport: str = spec["transport"]
        if self.transport not in TRANSPORTS:
            raise SystemExit(f"queryload: unknown transport {self.transport!r}")
        self.samples: str | None = spec.get("samples")
        self.per_request: int = spec["ids"]
        rng = random.Random(spec.get("seed", 1))
        population: list[str] = spec["population"]
        pool = [rng.sample(population, self.per_request) for _ in range(spec.get("pool", 256))]
        self.pool_size = len(pool)
        self._build_requests(pool)
        self.clients = [
            Client(i, name, (i * 37) % self.pool_size) for i, name in enumerate(spec["clients"])
        ]
        self.by_fd: dict[int, Client] = {}
        self.rbuf = bytearray(RECV_SIZE)
        self.rview = memoryview(self.rbuf)
        self.retries: list[tuple[float, int]] = []
        self.next_progress = 0.0
        # connecting
        self.connected = 0
        self.failed = 0
        self.connected_sent = False
        self.failures: Counter[str] = Counter()  # why clients never got ready
        self.closes: Counter[str] = Counter()  # connections lost or ended after ready
        self.reconnects = 0
        # requests
        self.started = False
        self.w0 = self.w1 = float("inf")
        self.completed = 0
        self.errors: Counter[str] = Counter()
        self.window_ok = 0
        self.window_errors = 0
        self.window_users = 0
        self.window_online = 0
        self.latency = array("f")  # ms, answers that arrived in [w0, w1)

    def _build_requests(self, pool: list[list[str]]) -> None:
        host = f"{self.host}:{self.port}"
        self.requests: list[bytes] = []
        self.ws_ids: list[bytes] = []  # what a WebSocket answer must contain
        for k, ids in enumerate(pool):
            if self.transport == "ws":
                payload = {"type": "get_presence", "userIds": ids, "requestId": f"r{k}"}
                self.requests.append(wire.client_frame(orjson.dumps(payload)))
                self.ws_ids.append(f'"requestId":"r{k}"'.encode())
            elif self.transport == "rest":
                target = f"/api/presence?ids={','.join(ids)}"
                self.requests.append(f"GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            elif self.transport == "connect":
                body = proto_request(ids)
                head = (
                    f"POST {GRPC_PATH} HTTP/1.1\r\nHost: {host}\r\n"
                    "Content-Type: application/proto\r\nConnect-Protocol-Version: 1\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                )
                self.requests.append(head.encode() + body)
            else:  # grpc: the length-prefixed message; frames are built per call
                message = proto_request(ids)
                self.requests.append(b"\x00" + struct.pack("!I", len(message)) + message)
        self.grpc_headers = grpc_header_block(self.host, self.port)

    # --- the loop ------------------------------------------------------------------

    def run(self) -> None:
        stdin = self._listen_to_commands()
        for client in self.clients:
            self._connect(client)
        by_fd = self.by_fd
        while self.running:
            timeout = self._timers(time.time())
            for fd, mask in self.epoll.poll(timeout, 1024):
                if fd == stdin:
                    self._read_commands(stdin)
                    continue
                ready = by_fd.get(fd)
                if ready is not None:
                    self._on_ready(ready, mask)
            self._check_connected()
        self._finish()

    def _timers(self, now: float) -> float:
        if now >= self.next_progress:
            self.next_progress = now + PROGRESS_EVERY
            self._emit("progress", **self._counts())
            for client in self.clients:
                if client.state != Client.READY:
                    continue
                if client.pending >= 0 and now >= client.deadline:
                    self._fail(client, "no answer after GOAWAY" if client.draining else "timeout")
                elif (
                    self.transport == "ws"
                    and client.pending < 0
                    and now - client.last_send >= HEARTBEAT_INTERVAL
                ):  # a WebSocket client not querying (yet) keeps its session alive
                    self._send(client, wire.client_frame(b'{"type":"heartbeat"}'))
        while self.retries and self.retries[0][0] <= now:
            _, index = heapq.heappop(self.retries)
            self._connect(self.clients[index])
        wake = self.next_progress
        if self.retries:
            wake = min(wake, self.retries[0][0])
        return max(0.0, wake - time.time())

    def _check_connected(self) -> None:
        if not self.connected_sent and self.connected + self.failed == len(self.clients):
            self.connected_sent = True
            self._emit("connected", failures=dict(self.failures), **self._counts())

    # --- connections -------------------------------------------------------------------

    def _connect(self, client: Client) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        client.sock = sock
        client.state = Client.CONNECTING
        client.buf = bytearray()
        client.out = b""
        client.draining = False
        client.pending = -1
        client.stream, client.next_stream = 0, 1
        client.body = bytearray()
        client.send_window = client.stream_window = 65535
        client.recv_used = 0
        client.held = b""
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, errno.EINPROGRESS):
            self._fail(client, f"connect: {errno.errorcode.get(code, code)}")
            return
        self.by_fd[sock.fileno()] = client
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def _on_connected(self, client: Client) -> None:
        """TCP is up: the transport's own opening, or ready at once (HTTP/1.1)."""
        assert client.sock is not None
        self.epoll.modify(client.sock.fileno(), select.EPOLLIN)
        if self.transport == "ws":
            path = f"/ws?userId={client.name}&deviceId=bench-query"
            request, client.accept_key = wire.upgrade_request(self.host, self.port, path)
            client.state = Client.HANDSHAKE
            self._send(client, request)
        elif self.transport == "grpc":
            client.state = Client.GREETING
            settings = struct.pack(
                "!HIHI", _SETTINGS_ENABLE_PUSH, 0, _SETTINGS_INITIAL_WINDOW, _MAX_WINDOW
            )
            self._send(
                client,
                _H2_PREFACE
                + h2_frame(_SETTINGS, 0, 0, settings)
                + h2_frame(_WINDOW_UPDATE, 0, 0, struct.pack("!I", _MAX_WINDOW - 65535)),
            )
        else:
            self._ready(client)

    def _ready(self, client: Client) -> None:
        client.state = Client.READY
        client.last_send = time.time()
        if not client.ready_once:
            client.ready_once = True
            self.connected += 1
        else:
            self.reconnects += 1
        if self.started:
            self._issue(client, client.want or time.time())

    def _fail(self, client: Client, reason: str) -> None:
        """The connection broke or was ended: count it, and reconnect a client that
        had been ready (a request in flight is an error: the next one starts afresh)."""
        if client.state == Client.CLOSED:
            return
        self._drop(client)
        if not client.ready_once:
            self.failed += 1
            self.failures[reason] += 1
            return
        if client.pending >= 0:
            self._error(client, f"lost: {reason}", time.time())
        self.closes[reason] += 1
        client.want = time.time()
        heapq.heappush(self.retries, (time.time() + RETRY_DELAY, client.index))

    def _recycle(self, client: Client) -> None:
        """The server ends this connection after the answer just read: reconnect now."""
        self._drop(client)
        client.want = time.time()
        self._connect(client)

    def _drop(self, client: Client) -> None:
        if client.sock is not None:
            fd = client.sock.fileno()
            self.by_fd.pop(fd, None)
            with contextlib.suppress(OSError, ValueError):
                self.epoll.unregister(fd)
            client.sock.close()
            client.sock = None
        client.state = Client.CLOSED
        client.buf = bytearray()  # a parse loop over the old buffer sees it is over

    # --- requests ------------------------------------------------------------------------

    def _issue(self, client: Client, since: float) -> None:
        """Send the client's next request, if the run is on (``since``: the latency's start)."""
        client.want = 0.0
        if not self.started or time.time() >= self.w1 or client.state != Client.READY:
            return
        k = client.next
        client.next = (k + 1) % self.pool_size
        client.pending = k
        client.started = since
        client.deadline = time.time() + CALL_TIMEOUT
        if self.transport == "grpc":
            self._grpc_call(client, self.requests[k])
        else:
            self._send(client, self.requests[k])

    def _grpc_call(self, client: Client, message: bytes) -> None:
        """A new stream: HEADERS, then the message in one DATA frame that ends it."""
        if len(message) > client.stream_window:
            self._error(client, "request larger than the stream window", time.time())
            return
        if len(message) > client.send_window:
            client.held = message  # sent when the server opens its window
            return
        client.send_window -= len(message)
        stream = client.next_stream
        client.next_stream += 2
        client.stream = stream
        client.body = bytearray()
        self._send(
            client,
            h2_frame(_HEADERS, _END_HEADERS, stream, self.grpc_headers)
            + h2_frame(_DATA, _END_STREAM, stream, message),
        )

    def _done(self, client: Client, arrived: float, users: int, online: int) -> None:
        """The answer to the request in flight arrived and was checked."""
        if users != self.per_request:
            self._error(client, f"answer with {users} users", arrived)
            return
        client.pending = -1
        self.completed += 1
        if self.w0 <= arrived < self.w1:
            self.window_ok += 1
            self.window_users += users
            self.window_online += online
            self.latency.append((arrived - client.started) * 1000)
        self._next(client)

    def _error(self, client: Client, reason: str, arrived: float) -> None:
        client.pending = -1
        self.completed += 1
        self.errors[reason] += 1
        if self.w0 <= arrived < self.w1:
            self.window_errors += 1
        self._next(client)

    def _next(self, client: Client) -> None:
        if client.state != Client.READY:
            return  # lost: the reconnect sends the next one
        if client.draining:
            self._recycle(client)
            return
        self._issue(client, time.time())

    # --- I/O ---------------------------------------------------------------------------

    def _on_ready(self, client: Client, mask: int) -> None:
        sock = client.sock
        if sock is None:
            return
        if client.state == Client.CONNECTING:
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                self._fail(client, f"connect: {errno.errorcode.get(code, code)}")
                return
            self._on_connected(client)
            return
        if mask & select.EPOLLOUT and client.out:
            self._flush(client)
        if not mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
            return
        try:
            size, ancillary, _, _ = sock.recvmsg_into([self.rbuf], CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            self._fail(client, f"recv: {error_name(error)}")
            return
        if not size:
            self._fail(client, "eof")
            return
        arrived = arrival(ancillary)
        client.buf += self.rview[:size]
        if self.transport == "ws":
            self._on_ws(client, arrived)
        elif self.transport == "grpc":
            self._on_h2(client, arrived)
        else:
            self._on_http(client, arrived)

    def _on_ws(self, client: Client, arrived: float) -> None:
        buf = client.buf
        if client.state == Client.HANDSHAKE:
            try:
                start = wire.split_response(buf, client.accept_key)
            except wire.HandshakeError as error:
                self._fail(client, f"handshake: {error}")
                return
            if start is None:
                return
            del buf[:start]
            client.state = Client.GREETING
        pos, end = 0, len(buf)
        while client.buf is buf:
            frame = wire.frame_at(buf, pos, end)
            if frame is None:
                break
            opcode, start, pos = frame
            if opcode == wire.OP_TEXT:
                if client.state == Client.GREETING:
                    if buf.find(_WS_WELCOME, start, pos) < 0:
                        self._fail(client, "no welcome: " + bytes(buf[start:pos]).decode()[:80])
                        return
                    self._ready(client)
                elif client.pending >= 0 and buf.find(self.ws_ids[client.pending], start, pos) >= 0:
                    if buf.find(_WS_PRESENCE, start, pos) >= 0:
                        users = buf.count(_JSON_USER, start, pos)
                        online = buf.count(_JSON_ONLINE, start, pos)
                        self._done(client, arrived, users, online)
                    else:
                        reply = orjson.loads(buf[start:pos])
                        self._error(client, f"ws {reply.get('type')} {reply.get('code')}", arrived)
                # else: heartbeat_ack, presence_state, pushes: not answers
            elif opcode == wire.OP_CLOSE:
                payload = bytes(buf[start:pos])
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                self._send(client, wire.close_frame(code))
                self._fail(client, f"close {code}")
                return
            elif opcode == wire.OP_PING:
                self._send(client, wire.client_frame(bytes(buf[start:pos]), wire.OP_PONG))
        del buf[:pos]

    def _on_http(self, client: Client, arrived: float) -> None:
        """HTTP/1.1 answers: Content-Length bodies (``/api``) or chunked ones (Connect)."""
        buf = client.buf
        while client.buf is buf:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            start = end + 4
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                eol = head.find(b"\r\n", at + 2)
                stop = start + int(head[at + 17 : eol if eol >= 0 else len(head)])
                if len(buf) < stop:
                    return
                body: bytes | bytearray = buf
                used = stop
            elif b"\r\ntransfer-encoding: chunked" in head:
                chunked = dechunk(buf, start)
                if chunked is None:
                    return
                body, used = chunked
                start, stop = 0, len(body)
            else:
                self._fail(client, "answer without a length")
                return
            if b"\r\nconnection: close" in head:
                client.draining = True
            status = int(head[9:12])
            if client.pending < 0:
                self._fail(client, f"unasked answer {status}")
                return
            if status != 200:
                self._error(client, f"http {status}", arrived)
            elif self.transport == "rest":
                users = body.count(_JSON_USER, start, stop)
                self._done(client, arrived, users, body.count(_JSON_ONLINE, start, stop))
            else:
                try:
                    users, online = proto_users(body, start, stop)
                except (ValueError, IndexError) as error:
                    self._error(client, f"bad answer: {error}", arrived)
                else:
                    self._done(client, arrived, users, online)
            del buf[:used]

    def _on_h2(self, client: Client, arrived: float) -> None:
        buf = client.buf
        pos, end = 0, len(buf)
        while client.buf is buf and end - pos >= 9:
            high, low, kind, flags, stream = _H2_HEAD.unpack_from(buf, pos)
            stream &= _MAX_WINDOW
            start = pos + 9
            stop = start + (high << 8 | low)
            if stop > end:
                break
            pos = stop
            mine = stream == client.stream and client.pending >= 0
            if kind == _DATA:
                client.recv_used += stop - start
                if client.recv_used >= 1 << 30:
                    update = struct.pack("!I", client.recv_used)
                    self._send(client, h2_frame(_WINDOW_UPDATE, 0, 0, update))
                    client.recv_used = 0
                if mine:
                    if flags & _PADDED:
                        stop -= buf[start]
                        start += 1
                    client.body += buf[start:stop]
                    if flags & _END_STREAM:
                        self._grpc_done(client, arrived)
            elif kind == _HEADERS:
                if mine and flags & _END_STREAM:
                    self._grpc_done(client, arrived)
            elif kind == _SETTINGS:
                if not flags & _ACK:
                    for at in range(start, stop - 5, 6):
                        key, value = struct.unpack_from("!HI", buf, at)
                        if key == _SETTINGS_INITIAL_WINDOW:
                            client.stream_window = value
                    self._send(client, h2_frame(_SETTINGS, _ACK, 0))
                    if client.state == Client.GREETING:
                        self._ready(client)
            elif kind == _PING:
                if not flags & _ACK:
                    self._send(client, h2_frame(_PING, _ACK, 0, bytes(buf[start:stop])))
            elif kind == _WINDOW_UPDATE:
                if stream == 0:
                    client.send_window += struct.unpack_from("!I", buf, start)[0] & _MAX_WINDOW
                    self._send_held(client)
            elif kind == _RST_STREAM:
                if mine:
                    code = struct.unpack_from("!I", buf, start)[0]
                    self._error(client, f"rst_stream {code}", arrived)
            elif kind == _GOAWAY:
                last = struct.unpack_from("!I", buf, start)[0] & _MAX_WINDOW
                client.draining = True
                client.deadline = min(client.deadline, time.time() + GOAWAY_GRACE)
                if client.pending < 0:
                    self._recycle(client)
                elif client.stream > last:  # not processed: ask again on a new connection
                    client.pending = -1
                    self.closes["goaway before the call"] += 1
                    self._recycle(client)
        del buf[:pos]

    def _grpc_done(self, client: Client, arrived: float) -> None:
        body = client.body
        if len(body) < 5:
            self._error(client, "grpc: no message (an error status)", arrived)
            return
        size = struct.unpack_from("!I", body, 1)[0]
        try:
            users, online = proto_users(body, 5, 5 + size)
        except (ValueError, IndexError) as error:
            self._error(client, f"bad answer: {error}", arrived)
            return
        self._done(client, arrived, users, online)

    def _send_held(self, client: Client) -> None:
        if client.held and len(client.held) <= client.send_window:
            message, client.held = client.held, b""
            self._grpc_call(client, message)

    def _send(self, client: Client, data: bytes) -> None:
        client.last_send = time.time()
        self._write(client, data)

    def _command(self, command: dict[str, Any]) -> None:
        if command["cmd"] == "start":
            self.w0, self.w1 = command["w0"], command["w1"]
            self.started = True
            now = time.time()
            for client in self.clients:
                if client.state == Client.READY and client.pending < 0:
                    self._issue(client, now)
        elif command["cmd"] == "stop":
            self.running = False

    def _counts(self) -> dict[str, Any]:
        return {
            "connected": self.connected,
            "failed": self.failed,
            "completed": self.completed,
            "errors": sum(self.errors.values()),
        }

    def _finish(self) -> None:
        if self.samples:
            with open(self.samples + ".latency", "wb") as file:
                self.latency.tofile(file)
        self._emit(
            "result",
            **self._counts(),
            window_ok=self.window_ok,
            window_errors=self.window_errors,
            window_users=self.window_users,
            window_online=self.window_online,
            error_reasons=dict(self.errors),
            failures=dict(self.failures),
            closes=dict(self.closes),
            reconnects=self.reconnects,
        )
        for client in self.clients:
            if client.state == Client.READY and self.transport == "ws":
                self._send(client, wire.close_frame(1000))
            self._drop(client)


def main() -> None:
    epoll_loop.main(QueryLoad)


if __name__ == "__main__":
    main()
