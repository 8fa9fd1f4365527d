"""Server-to-client WebSocket frames (RFC 6455 section 5.2), built once, sent many times.

A server frame is never masked and carries no per-connection state when no
extension is negotiated, so the bytes of one push are the same for every
watcher: they are built once per change and written to every socket as they are.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_CLOSE = 0x8
_FIN = 0x80


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
