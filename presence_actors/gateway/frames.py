"""The server side of RFC 6455 for the direct path: handshake, reading and writing frames.

Only what this server needs: no extensions, no subprotocols, text and binary
messages, ping/pong and the close handshake. wsproto (what hypercorn uses)
does the same in general; profiling the direct path showed its handshake
(h11 underneath) at about half of a connection's setup cost and its frame
layer as the largest part of handling one small message, so these few rules
are written out here, and tests hold them against wsproto as a reference.

Server frames are never masked and carry no per-connection state, so the
bytes of one push are the same for every watcher: built once, written many times.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import struct
from urllib.parse import parse_qsl, urlsplit

from attrs import frozen

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_FIN = 0x80

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_TOO_BIG = 1009
_NO_STATUS = 1005
# Close codes a peer may send (RFC 6455 7.4.1 and the IANA registry); 3000-4999 too.
_SENDABLE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# --- writing -----------------------------------------------------------------------


def frame(payload: bytes, opcode: int = OP_TEXT) -> bytes:
    """One unfragmented, unmasked frame."""
    size = len(payload)
    if size < 126:
        header = bytes((_FIN | opcode, size))
    elif size < 1 << 16:
        header = struct.pack("!BBH", _FIN | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", _FIN | opcode, 127, size)
    return header + payload


def text_frame(text: str) -> bytes:
    return frame(text.encode())


def close_frame(code: int, reason: str = "") -> bytes:
    # A control frame carries at most 125 bytes: the code and a trimmed reason.
    data = reason.encode()[:123]
    while True:
        try:
            data.decode()
            break
        except UnicodeDecodeError:  # cut inside a character
            data = data[:-1]
    return frame(struct.pack("!H", code) + data, OP_CLOSE)


# --- the handshake -------------------------------------------------------------------


class HandshakeError(Exception):
    """An upgrade request this server cannot accept; ``response`` says why in HTTP."""

    def __init__(self, status: int, reason: str, extra: bytes = b"") -> None:
        super().__init__(reason)
        body = reason.encode()
        self.response = (
            f"HTTP/1.1 {status} {reason}\r\n".encode()
            + extra
            + b"content-type: text/plain\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )


@frozen
class Upgrade:
    """An accepted upgrade: what the session needs from the request, and the reply."""

    query: dict[str, str]
    headers: dict[str, str]
    response: bytes
    rest: bytes  # bytes that followed the request head (frames sent early)


def accept_upgrade(head: bytes) -> Upgrade:
    """Check a ``GET ... HTTP/1.1`` upgrade request head; raises HandshakeError."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        raise HandshakeError(400, "incomplete request head")
    lines = head[:end].decode("latin-1").split("\r\n")
    _, target, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    if "host" not in headers:
        raise HandshakeError(400, "missing Host header")
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(400, "not a WebSocket upgrade")
    if "upgrade" not in {t.strip().lower() for t in headers.get("connection", "").split(",")}:
        raise HandshakeError(400, "Connection header must include upgrade")
    if headers.get("sec-websocket-version") != "13":
        raise HandshakeError(426, "Upgrade Required", b"sec-websocket-version: 13\r\n")
    key = headers.get("sec-websocket-key", "")
    try:
        valid_key = len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        valid_key = False
    if not valid_key:
        raise HandshakeError(400, "invalid Sec-WebSocket-Key")
    accept = base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest())
    response = (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
        b"sec-websocket-accept: " + accept + b"\r\n\r\n"
    )
    query = dict(parse_qsl(urlsplit(target).query, keep_blank_values=True))
    return Upgrade(query, headers, response, head[end + 4 :])


# --- reading ---------------------------------------------------------------------------


class Kind(enum.Enum):
    TEXT = "text"
    BINARY = "binary"
    PING = "ping"
    CLOSE = "close"  # the peer closes: answer with a close frame and end
    TOO_BIG = "too big"  # a message over the limit: refuse it and close 1009
    FAILED = "failed"  # a protocol violation: close with ``code``


@frozen
class Received:
    kind: Kind
    data: str | bytes = b""
    code: int = CLOSE_NORMAL
    reason: str = ""


class FrameReader:
    """Turns bytes from a client into messages, pings and closes, in order.

    Client frames must be masked; fragments are joined; control frames may come
    between fragments. A message is refused as soon as its size is known to pass
    ``max_message`` bytes, without buffering it. After CLOSE, TOO_BIG or FAILED
    the reader yields nothing more.
    """

    def __init__(self, max_message: int) -> None:
        self._max = max_message
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_size = 0
        self._fragment_kind = OP_TEXT
        self._done = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> Received | None:
        """The next complete thing received, or None until more bytes are fed."""
        while not self._done:
            header = self._header()
            if header is None:
                return None
            if isinstance(header, Received):
                return self._end(header)
            fin, opcode, start, size, mask = header
            if opcode >= OP_CLOSE:
                if not fin or size > 125:
                    return self._end(_failed(CLOSE_PROTOCOL_ERROR, "bad control frame"))
            elif (opcode == OP_CONTINUATION) != bool(self._fragments or self._fragment_size):
                return self._end(_failed(CLOSE_PROTOCOL_ERROR, "unexpected fragment"))
            elif self._fragment_size + size > self._max:
                return self._end(Received(Kind.TOO_BIG))
            if len(self._buffer) < start + size:
                return None
            payload = _unmask(bytes(self._buffer[start : start + size]), mask)
            del self._buffer[: start + size]
            received = self._frame(fin, opcode, payload)
            if received is not None:
                return received
        return None

    def _header(self) -> tuple[bool, int, int, int, bytes] | Received | None:
        buffer = self._buffer
        if len(buffer) < 2:
            return None
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            return _failed(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was agreed)")
        opcode = first & 0x0F
        if opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            return _failed(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode}")
        if not second & 0x80:
            return _failed(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
        size, start = second & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                return None
            (size,) = struct.unpack_from("!H", buffer, 2)
            start = 4
        elif size == 127:
            if len(buffer) < 10:
                return None
            (size,) = struct.unpack_from("!Q", buffer, 2)
            start = 10
        if len(buffer) < start + 4:
            return None
        mask = bytes(buffer[start : start + 4])
        return bool(first & _FIN), opcode, start + 4, size, mask

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> Received | None:
        if opcode == OP_PING:
            return Received(Kind.PING, payload)
        if opcode == OP_PONG:
            return None
        if opcode == OP_CLOSE:
            return self._end(_close(payload))
        if opcode != OP_CONTINUATION:
            self._fragment_kind = opcode
        if not fin:
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            return None
        if self._fragments:
            self._fragments.append(payload)
            payload = b"".join(self._fragments)
            self._fragments, self._fragment_size = [], 0
        if self._fragment_kind == OP_BINARY:
            return Received(Kind.BINARY, payload)
        try:
            return Received(Kind.TEXT, payload.decode())
        except UnicodeDecodeError:
            return self._end(_failed(CLOSE_INVALID_PAYLOAD, "text is not valid UTF-8"))

    def _end(self, received: Received) -> Received:
        self._done = True
        self._buffer.clear()
        return received


def _failed(code: int, reason: str) -> Received:
    return Received(Kind.FAILED, code=code, reason=reason)


def _close(payload: bytes) -> Received:
    if not payload:
        return Received(Kind.CLOSE, code=_NO_STATUS)
    if len(payload) == 1:
        return _failed(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
        return _failed(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        return _failed(CLOSE_INVALID_PAYLOAD, "close reason is not valid UTF-8")
    return Received(Kind.CLOSE, code=code, reason=reason)


def _unmask(payload: bytes, mask: bytes) -> bytes:
    size = len(payload)
    if not size:
        return payload
    # XOR as one big integer: far faster in CPython than byte by byte.
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")
