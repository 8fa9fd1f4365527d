"""The server side of RFC 6455 frames for the direct path: reading and writing them.

Only what this server needs: no extensions, no subprotocols, text and binary
messages, ping/pong and the close frames (the handshake is
:mod:`handshake`). wsproto (what hypercorn uses) does the same in general at
four to ten times the cost per message and per connection here
(``bench/ws_frames.py``; the decision and its figures are in
docs/ARCHITECTURE.md), so these rules are written out here, and
tests/test_ws_conformance.py holds them to RFC 6455 case by case, in the
Autobahn|Testsuite's groups, against a real server.

Server frames are never masked and carry no per-connection state, so the
bytes of one push are the same for every watcher: built once, written many times.
"""

from __future__ import annotations

import codecs
import enum
import struct

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


# --- reading ---------------------------------------------------------------------------


# What each frame after the first costs a message, on top of its payload: about
# its size on the wire (2-byte header and 4-byte mask at least) and its cost to
# parse, so that empty fragments are not free.
FRAME_COST = 16
# Frames one message may have. Browsers never fragment what they send; a
# client that does can still send a 32 KiB message in 64-byte pieces
# (Autobahn's case 9.3 shape, scaled to the default 64 KiB limit; with
# FRAME_COST that is 40 KiB of the limit). More frames than that only cost the
# server a Python step each.
MAX_FRAGMENTS = 1024


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

    Client frames must be masked; fragments are joined into one bytearray
    (never one object per fragment); control frames may come between
    fragments. A message is refused (TOO_BIG) as soon as its cost is known to
    pass ``max_message``: the payloads of its frames plus :data:`FRAME_COST`
    for every frame after the first (empty ones too), checked from each
    frame's header before its payload is buffered; or once it has more than
    ``max_fragments`` frames. Text is checked as UTF-8 fragment by fragment,
    so invalid text fails (1007) at the first frame that shows it. After
    CLOSE, TOO_BIG or FAILED the reader yields nothing more.
    """

    def __init__(self, max_message: int, max_fragments: int = MAX_FRAGMENTS) -> None:
        self._max = max_message
        self._max_fragments = max_fragments
        self._buffer = bytearray()
        self._message = bytearray()
        self._fragments = 0  # frames of the message being joined (0: none started)
        self._cost = 0
        self._fragment_kind = OP_TEXT
        self._utf8 = _utf8_decoder()
        self._done = False

    def feed(self, data: bytes | memoryview) -> None:
        self._buffer += data

    def whole_text(self, data: bytes | memoryview) -> str | None:
        """The text of ``data`` when it is exactly one small, masked, unfragmented
        text frame and nothing else is pending: the usual client message (a
        heartbeat) read without buffering or any object but its text. Otherwise
        ``data`` is fed, as :meth:`feed`, and None returned: :meth:`next` then
        reads it by the general rules (with their errors).

        The same checks hold: the mask bit, no reserved bits, the size limit,
        strict UTF-8 (invalid text takes the general path, which fails it).
        """
        size = len(data) - 6
        if (
            0 <= size < 126
            and data[0] == _FIN | OP_TEXT
            and data[1] == 0x80 | size
            and size <= self._max
            and not self._buffer
            and not self._fragments
            and not self._done
        ):
            try:
                return _unmask(data[6:], bytes(data[2:6])).decode()
            except UnicodeDecodeError:
                pass
        self._buffer += data
        return None

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
            elif (opcode == OP_CONTINUATION) != bool(self._fragments):
                return self._end(_failed(CLOSE_PROTOCOL_ERROR, "unexpected fragment"))
            elif self._fragments >= self._max_fragments or (
                self._cost + size + (FRAME_COST if self._fragments else 0) > self._max
            ):
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
            if size >> 63:
                return _failed(CLOSE_PROTOCOL_ERROR, "the 64-bit length has its top bit set")
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
        if fin and not self._fragments:  # the usual case: a message in one frame
            return self._message_of(payload, opcode)
        self._cost += len(payload) + (FRAME_COST if self._fragments else 0)
        self._fragments += 1
        self._message += payload
        if self._fragment_kind == OP_TEXT:
            try:
                self._utf8.decode(payload, final=fin)
            except UnicodeDecodeError:
                return self._end(_failed(CLOSE_INVALID_PAYLOAD, "text is not valid UTF-8"))
        if not fin:
            return None
        data = bytes(self._message)
        self._message = bytearray()
        self._fragments = self._cost = 0
        self._utf8.reset()
        return self._message_of(data, self._fragment_kind)

    def _message_of(self, payload: bytes, opcode: int) -> Received:
        if opcode == OP_BINARY:
            return Received(Kind.BINARY, payload)
        try:
            return Received(Kind.TEXT, payload.decode())
        except UnicodeDecodeError:
            return self._end(_failed(CLOSE_INVALID_PAYLOAD, "text is not valid UTF-8"))

    def _end(self, received: Received) -> Received:
        self._done = True
        self._buffer.clear()
        self._message = bytearray()
        return received


def _utf8_decoder() -> codecs.IncrementalDecoder:
    return codecs.getincrementaldecoder("utf-8")(errors="strict")


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


def _unmask(payload: bytes | memoryview, mask: bytes) -> bytes:
    size = len(payload)
    if not size:
        return b""
    # XOR as one big integer: far faster in CPython than byte by byte.
    key = (mask * (size // 4 + 1))[:size]
    value = int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")
    return value.to_bytes(size, "little")
