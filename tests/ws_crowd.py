"""A crowd of WebSocket clients in one process: ``python tests/ws_crowd.py PORT COUNT``.

Opens COUNT connections to 127.0.0.1:PORT as users ``crowd-0`` ... on one epoll,
a few hundred handshakes in flight at a time, and prints ``ready N`` once N
got their ``welcome`` (exits 2 if not all of them did within the time given).
Then it behaves as a client library does when the server closes: it answers a
close frame with its own and closes the socket. It prints ``closed N CODES``
(the close codes seen, e.g. ``1001:3000``) when every connection has ended, or
at EOF of its stdin (the test is done with it). Clients do not heartbeat: the
test stops the server within the heartbeat timeout.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import sys
import time
from collections import Counter

if __package__ in (None, ""):
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from tests.raw_ws import OP_CLOSE, client_frame, parse_frame, upgrade_head

IN_FLIGHT = 200
READY_TIMEOUT = 60.0


class Client:
    def __init__(self, number: int, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setblocking(False)
        self.sock.connect_ex(("127.0.0.1", port))
        self.head = upgrade_head(f"/ws?userId=crowd-{number}&deviceId=d{number}")
        self.sent = False
        self.buffer = bytearray()
        self.upgraded = False
        self.welcomed = False
        self.close_code: int | None = None
        self.ended = False
        self.error = ""

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            data = b""
        if not data:
            self.ended = True
            return
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            assert self.buffer.startswith(b"HTTP/1.1 101 "), bytes(self.buffer[:80])
            del self.buffer[: end + 4]
            self.upgraded = True
        while (parsed := parse_frame(self.buffer)) is not None:
            frame, size = parsed
            del self.buffer[:size]
            if frame.opcode == OP_CLOSE:
                self.close_code = frame.close_code
                with contextlib.suppress(OSError):
                    self.sock.send(client_frame(OP_CLOSE, frame.payload[:2]))
                self.ended = True
                return
            if not self.welcomed and json.loads(frame.payload)["type"] == "welcome":
                self.welcomed = True


def main() -> int:
    port, count = int(sys.argv[1]), int(sys.argv[2])
    poller = select.epoll()
    clients: dict[int, Client] = {}
    waiting = list(range(count))
    welcomed = 0
    deadline = time.monotonic() + READY_TIMEOUT
    while welcomed < count:
        if time.monotonic() > deadline:
            print(f"ready-timeout {welcomed}", flush=True)
            return 2
        while waiting and len(clients) - welcomed < IN_FLIGHT:
            client = Client(waiting.pop(), port)
            clients[client.sock.fileno()] = client
            poller.register(client.sock, select.EPOLLOUT | select.EPOLLIN)
        for fd, events in poller.poll(0.5):
            client = clients[fd]
            if events & select.EPOLLOUT and not client.sent:
                client.sock.send(client.head)
                client.sent = True
                poller.modify(fd, select.EPOLLIN)
            if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
                was = client.welcomed
                client.on_readable()
                welcomed += client.welcomed and not was
                if client.ended and not client.welcomed:
                    print(f"lost {client.error or 'EOF'} {bytes(client.buffer[:60])!r}", flush=True)
                    return 2
    print(f"ready {welcomed}", flush=True)
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    open_ = count
    while open_:
        for fd, _ in poller.poll():
            if fd == sys.stdin.fileno():
                open_ = 0
                break
            client = clients[fd]
            client.on_readable()
            if client.ended:
                poller.unregister(fd)
                client.sock.close()
                open_ -= 1
    codes = Counter(c.close_code for c in clients.values())
    summary = ",".join(f"{code}:{n}" for code, n in sorted(codes.items(), key=str))
    print(f"closed {sum(c.ended for c in clients.values())} {summary}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
