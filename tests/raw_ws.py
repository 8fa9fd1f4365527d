"""A raw RFC 6455 client for tests that must see every byte the server writes.

Pure functions build what a client sends (upgrade heads, masked frames, also
malformed ones) and parse what a server sends (unmasked frames, checked
strictly: a server frame cut in the middle or masked is an error here).
:class:`RawSocket` is a blocking socket with a deadline on every read, for
tests that talk to a server in another thread or process.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from typing import Any

from attrs import frozen

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3's example answer to KEY
_MASK = b"\x37\xfa\x21\x3d"


def upgrade_head(target: str = "/ws?userId=alice", *headers: str, host: str = "x") -> bytes:
    """A valid upgrade request head; ``headers`` are added as they are (``Name: value``)."""
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One client frame; ``rsv`` sets the reserved bits (1-7), ``length`` lies about size."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if size < 126:
        head = bytes((first, mask_bit | size))
    elif size < 1 << 16:
        head = struct.pack("!BBH", first, mask_bit | 126, size)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, size)
    if not masked:
        return head + payload
    body = bytes(b ^ _MASK[i % 4] for i, b in enumerate(payload))
    return head + _MASK + body


def text(message: dict[str, Any]) -> bytes:
    """A masked text frame carrying ``message`` as JSON."""
    return client_frame(OP_TEXT, json.dumps(message).encode())


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


@frozen
class Frame:
    fin: bool
    rsv: int
    opcode: int
    payload: bytes

    def json(self) -> dict[str, Any]:
        assert self.opcode == OP_TEXT, self
        value: dict[str, Any] = json.loads(self.payload)
        return value

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE, self
        return struct.unpack("!H", self.payload[:2])[0] if self.payload else None


def parse_frame(data: bytes | bytearray) -> tuple[Frame, int] | None:
    """The first server frame in ``data`` and its length, or None if it is incomplete."""
    if len(data) < 2:
        return None
    first, second = data[0], data[1]
    assert not second & 0x80, f"a server frame is masked: {bytes(data[:16])!r}"
    size, start = second & 0x7F, 2
    if size == 126:
        if len(data) < 4:
            return None
        (size,) = struct.unpack_from("!H", data, 2)
        start = 4
    elif size == 127:
        if len(data) < 10:
            return None
        (size,) = struct.unpack_from("!Q", data, 2)
        start = 10
    if len(data) < start + size:
        return None
    payload = bytes(data[start : start + size])
    return Frame(bool(first & 0x80), (first >> 4) & 7, first & 0x0F, payload), start + size


class RawSocket:
    """A blocking client socket: every read waits at most ``timeout`` seconds."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buffer = bytearray()

    def __enter__(self) -> RawSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read once more; False at end of stream (or a reset)."""
        self.sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return False
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def read_head(self) -> bytes:
        """The server's HTTP answer head (through the blank line)."""
        deadline = time.monotonic() + self.timeout
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if not self._fill(deadline):
                raise AssertionError(f"no complete answer head: {bytes(self.buffer)!r}")
        head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        return head

    def read_response(self) -> tuple[bytes, bytes]:
        """An HTTP answer whose body runs to the end of the stream: (head, body)."""
        head = self.read_head()
        self.read_to_end()
        body = bytes(self.buffer)
        self.buffer.clear()
        return head, body

    def open(self, target: str = "/ws?userId=alice", *headers: str) -> dict[str, Any]:
        """Upgrade and read the welcome; returns it."""
        self.send(upgrade_head(target, *headers))
        head = self.read_head()
        assert head.startswith(b"HTTP/1.1 101 "), head
        welcome = self.next_frame().json()
        assert welcome["type"] == "welcome", welcome
        return welcome

    def next_frame(self) -> Frame:
        """The next frame; AssertionError at the end of the stream or after ``timeout``."""
        deadline = time.monotonic() + self.timeout
        while (parsed := parse_frame(self.buffer)) is None:
            if not self._fill(deadline):
                raise AssertionError(f"the stream ended inside a frame: {bytes(self.buffer)!r}")
        found, size = parsed
        del self.buffer[:size]
        return found

    def next_message(self) -> dict[str, Any]:
        """The next text message, skipping pushes."""
        while True:
            message = self.next_frame().json()
            if message["type"] != "user_status_change":
                return message

    def read_to_end(self) -> None:
        """Read until the server ends the stream."""
        deadline = time.monotonic() + self.timeout
        while self._fill(deadline):
            if time.monotonic() > deadline:
                raise AssertionError("the server did not end the stream")

    def frames_to_end(self) -> list[Frame]:
        """Every frame up to the end of the stream, which must end on a frame boundary."""
        self.read_to_end()
        frames = []
        while (parsed := parse_frame(self.buffer)) is not None:
            found, size = parsed
            frames.append(found)
            del self.buffer[:size]
        assert not self.buffer, f"the stream ended inside a frame: {bytes(self.buffer[:40])!r}"
        return frames

    def closed_with(self) -> int | None:
        """Read to the end of the stream: the close code of the last frame (None: no close)."""
        frames = self.frames_to_end()
        closes = [f for f in frames if f.opcode == OP_CLOSE]
        assert len(closes) <= 1, frames
        if not closes:
            return None
        assert frames[-1].opcode == OP_CLOSE, f"frames after the close frame: {frames}"
        return closes[0].close_code
