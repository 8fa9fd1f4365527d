"""The client side of RFC 6455, as small as a load generator needs it.

Just enough for the presence server: an upgrade request without extensions
(so frames are never compressed), masked client frames, and a parser for the
unmasked, unfragmented frames a server sends. Pure functions over bytes, no
I/O: :mod:`bench.loadgen` owns the sockets. ``wsproto`` would do the same at
several times the CPU per frame, which is what a generator holding thousands
of connections cannot spare.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEADER_END = b"\r\n\r\n"


class HandshakeError(Exception):
    """The server did not switch protocols; the message carries its status line."""


def upgrade_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """The HTTP/1.1 upgrade request for ``path`` and the ``Sec-WebSocket-Accept`` expected."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    request = (
        f"GET {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Upgrade: websocket\r\n"
        "Connection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    return request, accept


def split_response(buffer: bytes | bytearray, accept: bytes) -> int | None:
    """Where the frames start after a complete ``101`` response, None while incomplete.

    Raises HandshakeError for any other status or a wrong accept key.
    """
    end = buffer.find(_HEADER_END)
    if end < 0:
        return None
    head = bytes(buffer[:end])
    status = head.split(b"\r\n", 1)[0]
    if b" 101 " not in status + b" ":
        raise HandshakeError(status.decode("latin-1"))
    if accept not in head:
        raise HandshakeError("wrong Sec-WebSocket-Accept")
    return end + len(_HEADER_END)


def client_frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked frame carrying ``payload``."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    mask = os.urandom(4)
    if not size:
        return header + mask
    # XOR as one big integer: far cheaper than a Python loop over the bytes.
    repeated = (mask * (size // 4 + 1))[:size]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")
    return header + mask + masked.to_bytes(size, "big")


def close_frame(code: int = 1000) -> bytes:
    return client_frame(struct.pack("!H", code), OP_CLOSE)


def frame_at(buffer: bytearray, pos: int, end: int) -> tuple[int, int, int] | None:
    """The frame starting at ``buffer[pos]`` if it is complete before ``end``:
    ``(opcode, payload start, payload end)``; None when more bytes are needed.

    Server frames are not masked (a mask key, which would be a protocol
    error, is skipped) and the server sends whole messages.
    """
    if end - pos < 2:
        return None
    second = buffer[pos + 1]
    size = second & 0x7F
    start = pos + 2
    if size == 126:
        if end - start < 2:
            return None
        size = (buffer[start] << 8) | buffer[start + 1]
        start += 2
    elif size == 127:
        if end - start < 8:
            return None
        size = int.from_bytes(buffer[start : start + 8], "big")
        start += 8
    if second & 0x80:
        start += 4
    stop = start + size
    if stop > end:
        return None
    return buffer[pos] & 0x0F, start, stop
