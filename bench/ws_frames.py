"""Our RFC 6455 layer (``gateway/frames.py``, ``handshake.py``) against wsproto, no I/O.

The frame-layer decision in docs/ARCHITECTURE.md rests on these figures. Three
costs a direct WebSocket session pays, each measured as the best of a few
timed repetitions (the least disturbed by other load on the machine):

- handshake: parse an upgrade request head and build the 101 answer
  (ours: ``handshake.accept_upgrade``; wsproto: a server ``WSConnection`` fed the head,
  its ``Request`` event, ``send(AcceptConnection())``);
- receive: one small masked text message (a heartbeat, 44 bytes of JSON) turned
  into a message (ours: ``FrameReader.feed`` + ``next``; wsproto:
  ``receive_data`` + ``events()`` on an open connection);
- send: one push to one watcher. Ours frames a push once and every watcher
  writes the same bytes, so per watcher it is an attribute read; wsproto
  frames per connection (``send(TextMessage)``). The framing itself is shown
  on its own line: ``frame`` against the same ``send``. Moving to wsproto
  while keeping the encode-once path would keep the first of the two.

Run: ``python bench/ws_frames.py`` (about five seconds, one core).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import AcceptConnection, Request, TextMessage

from presence_actors.gateway.frames import FrameReader, frame
from presence_actors.gateway.handshake import accept_upgrade
from presence_actors.protocol import Push

HEAD = (
    b"GET /ws?userId=alice&deviceId=laptop HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"User-Agent: bench\r\n\r\n"
)
HEARTBEAT = b'{"type":"heartbeat","requestId":"hb-000001"}'
PUSH = (
    b'{"type":"user_status_change","timestamp":"2026-12-01T10:30:00.000Z","userId":"u-12345",'
    b'"status":"busy","online":true,"statusMessage":"in a call","lastSeen":'
    b'"2026-12-01T10:29:59.000Z","username":"User 12345"}'
)
REPEATS = 5


def masked_text(payload: bytes) -> bytes:
    """A client text frame (masked, FIN), as a browser sends it."""
    key = os.urandom(4)
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes((0x81, 0x80 | len(payload))) + key + body


def best_per_op(run: Callable[[int], None], count: int) -> float:
    """Microseconds per operation: the best of REPEATS timed runs of ``count``."""
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        run(count)
        best = min(best, time.perf_counter() - start)
    return best / count * 1e6


def ours_handshake(count: int) -> None:
    for _ in range(count):
        accept_upgrade(HEAD)


def wsproto_handshake(count: int) -> None:
    for _ in range(count):
        server = WSConnection(ConnectionType.SERVER)
        server.receive_data(HEAD)
        for event in server.events():
            assert isinstance(event, Request)
        server.send(AcceptConnection())


def ours_receive(count: int) -> None:
    wire = masked_text(HEARTBEAT)
    reader = FrameReader(65536)
    for _ in range(count):
        reader.feed(wire)
        reader.next()


def wsproto_receive(count: int) -> None:
    wire = masked_text(HEARTBEAT)
    connection = Connection(ConnectionType.SERVER)
    for _ in range(count):
        connection.receive_data(wire)
        for _event in connection.events():
            pass


def ours_frame(count: int) -> None:
    for _ in range(count):
        frame(PUSH)


def ours_send_per_watcher(count: int) -> None:
    push = Push(view=None, timestamp=0, payload=PUSH, frame=PUSH.decode())  # type: ignore[arg-type]
    for _ in range(count):
        data = push.wire
        if data is None:
            data = push.wire = frame(push.payload)


def wsproto_send_per_watcher(count: int) -> None:
    connection = Connection(ConnectionType.SERVER)
    text = PUSH.decode()
    for _ in range(count):
        connection.send(TextMessage(data=text))


def main() -> None:
    rows = [
        ("handshake per connection", ours_handshake, wsproto_handshake, 5_000),
        ("receive per small masked message", ours_receive, wsproto_receive, 50_000),
        ("send per push per watcher", ours_send_per_watcher, wsproto_send_per_watcher, 100_000),
        ("frame one push", ours_frame, wsproto_send_per_watcher, 100_000),
    ]
    print(f"python {sys.version.split()[0]}, best of {REPEATS} runs, microseconds per operation")
    print(f"{'operation':36} {'frames.py':>10} {'wsproto':>10} {'ratio':>7}")
    for name, ours, theirs, count in rows:
        a = best_per_op(ours, count)
        b = best_per_op(theirs, count)
        print(f"{name:36} {a:10.2f} {b:10.2f} {b / a:6.1f}x")


if __name__ == "__main__":
    main()
