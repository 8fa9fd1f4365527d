"""RFC 6455 conformance of the direct path, case by case, after the Autobahn|Testsuite.

One real server (in-process, in a thread, for the whole module) and a raw
client per case. The case numbers and shapes are Autobahn's (groups 1-7, 9,
12-13) plus the opening handshake (H.*). Autobahn's server cases expect an
echo; this server speaks JSON, so each case states what it must do instead:

- a text message that is a request gets its reply (a bare ``heartbeat``,
  padded to the size the case asks for, is answered ``heartbeat_ack`` at
  once); text that is not JSON gets ``INVALID_JSON``, a binary message
  ``INVALID_MESSAGE``; the connection stays open;
- a ping gets a pong with the same payload, a pong gets nothing;
- a protocol violation fails the connection: a close frame with 1002 (1007
  for invalid UTF-8), then the end of the stream, and nothing else;
- a close is echoed (its code; 1000 for an empty one) and nothing follows it;
- group 9 is scaled to ``limits.max_message_bytes`` (64 KiB): a message over
  it gets ``TOO_LARGE`` and close 1009, fragments included (each frame after
  the first costs 16 bytes, at most 1024 frames);
- groups 12-13: no extension is ever agreed (offers are ignored), so a
  compressed (RSV1) frame fails the connection.

Cases that leave the connection open end with a client close (1000), whose
echo must be the last frame. Pushes (other sessions of this module come and
go) are left out of what is compared.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from attrs import frozen

from .raw_ws import (
    ACCEPT,
    KEY,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    RawSocket,
    client_frame,
    close_payload,
    parse_frame,
    upgrade_head,
)
from .server_harness import running_server

LIMIT = 65536


# --- the server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """One server for the module, run by trio in a thread until the module is done."""
    tmp_path: Path = tmp_path_factory.mktemp("conformance")
    ready: list[int] = []
    started = threading.Event()
    stop = threading.Event()

    async def serve() -> None:
        limits = {"messages_per_second": 1e6, "burst": 1_000_000}
        async with running_server(tmp_path, limits=limits) as server:
            ready.append(server.port)
            started.set()
            while not stop.is_set():
                await trio.sleep(0.05)

    thread = threading.Thread(target=trio.run, args=(serve,), daemon=True)
    thread.start()
    assert started.wait(30), "the server did not start"
    yield ready[0]
    stop.set()
    thread.join(timeout=15)


# --- what a case sends and expects ----------------------------------------------------


@frozen
class Chop:
    """Bytes sent in pieces of ``size`` (1: octet-wise), a short pause between pieces."""

    data: bytes
    size: int = 1


@frozen
class FrameWise:
    """Frames sent one write each, a short pause between them."""

    frames: tuple[bytes, ...]


Send = bytes | Chop | FrameWise
ACK = "heartbeat_ack"
INVALID_JSON = "error:INVALID_JSON"
INVALID_MESSAGE = "error:INVALID_MESSAGE"
TOO_LARGE = "error:TOO_LARGE"
Expected = str | tuple[str, bytes] | tuple[str, int]


def pong(payload: bytes) -> tuple[str, bytes]:
    return ("pong", payload)


def close(code: int) -> tuple[str, int]:
    return ("close", code)


def request(size: int, pad: bytes = b"") -> bytes:
    """A bare heartbeat of exactly ``size`` bytes (``pad`` inside, made up with ``a``)."""
    base = b'{"type":"heartbeat","pad":"' + pad + b'"}'
    assert size >= len(base), size
    return base[:-2] + b"a" * (size - len(base)) + b'"}'


def T(payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    return client_frame(OP_TEXT, payload, fin=fin, rsv=rsv)


def B(payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    return client_frame(OP_BINARY, payload, fin=fin, rsv=rsv)


def C(payload: bytes, *, fin: bool = True) -> bytes:
    return client_frame(OP_CONTINUATION, payload, fin=fin)


def PING(payload: bytes = b"", *, fin: bool = True, rsv: int = 0) -> bytes:
    return client_frame(OP_PING, payload, fin=fin, rsv=rsv)


def PONG(payload: bytes = b"", *, fin: bool = True) -> bytes:
    return client_frame(OP_PONG, payload, fin=fin)


def CLOSE(payload: bytes = b"", *, rsv: int = 0) -> bytes:
    return client_frame(OP_CLOSE, payload, rsv=rsv)


def OP(opcode: int, payload: bytes = b"") -> bytes:
    return client_frame(opcode, payload)


def fragments(data: bytes, size: int, opcode: int = OP_TEXT) -> bytes:
    pieces = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
    return b"".join(
        client_frame(opcode if i == 0 else OP_CONTINUATION, piece, fin=i == len(pieces) - 1)
        for i, piece in enumerate(pieces)
    )


@frozen
class Case:
    id: str
    sends: tuple[Send, ...]
    expect: tuple[Expected, ...]
    # The connection stays open: the client closes (1000) and expects the echo last.
    stays_open: bool = True


CASES: list[Case] = []


def case(id: str, sends: list[Send], expect: list[Expected], *, stays_open: bool = True) -> None:
    CASES.append(Case(id, tuple(sends), tuple(expect), stays_open))


def fails(id: str, sends: list[Send], before: list[Expected], code: int = 1002) -> None:
    """The connection must fail: what comes ``before``, then close ``code``, then nothing."""
    case(id, sends, [*before, close(code)], stays_open=False)


# --- 1 framing ----------------------------------------------------------------------------

for n, size in enumerate([0, 125, 126, 127, 128, 65535, 65536], start=1):
    text = request(size) if size >= 40 else b"x" * size
    case(f"1.1.{n}", [T(text)], [ACK if size >= 40 else INVALID_JSON])
    case(f"1.2.{n}", [B(b"\x00" * size)], [INVALID_MESSAGE])
case("1.1.8", [Chop(T(request(65536)), 997)], [ACK])
case("1.2.8", [Chop(B(b"\xfe" * 65536), 997)], [INVALID_MESSAGE])

# --- 2 ping/pong --------------------------------------------------------------------------

case("2.1", [PING()], [pong(b"")])
case("2.2", [PING(b"Hello, world!")], [pong(b"Hello, world!")])
case(
    "2.3", [PING(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")], [pong(b"\x00\xff\xfe\xfd\xfc\xfb\x00\xff")]
)
case("2.4", [PING(b"\xfe" * 125)], [pong(b"\xfe" * 125)])
fails("2.5", [PING(b"\xfe" * 126)], [])
case("2.6", [Chop(PING(b"\xfe" * 125))], [pong(b"\xfe" * 125)])
case("2.7", [PONG()], [])
case("2.8", [PONG(b"unsolicited pong payload")], [])
case("2.9", [PONG(b"unsolicited pong payload"), PING(b"ping payload")], [pong(b"ping payload")])
case("2.10", [b"".join(PING(b"payload-%d" % i) for i in range(10))],
     [pong(b"payload-%d" % i) for i in range(10)])  # fmt: skip
case("2.11", [Chop(b"".join(PING(b"payload-%d" % i) for i in range(10)))],
     [pong(b"payload-%d" % i) for i in range(10)])  # fmt: skip

# --- 3 reserved bits ------------------------------------------------------------------------

fails("3.1", [T(request(40), rsv=2)], [])  # RSV2
fails("3.2", [T(request(40)), T(request(40), rsv=4), PING()], [ACK])
fails("3.3", [FrameWise((T(request(40)), T(request(40), rsv=6), PING()))], [ACK])
fails("3.4", [Chop(T(request(40)) + T(request(40), rsv=1) + PING())], [ACK])
fails("3.5", [B(b"\xff" * 8, rsv=5)], [])
fails("3.6", [PING(b"payload", rsv=3)], [])
fails("3.7", [CLOSE(close_payload(1000), rsv=7)], [])

# --- 4 opcodes ------------------------------------------------------------------------------

for n, opcode in enumerate([3, 4, 5, 6, 7], start=1):
    fails(f"4.1.{n}", [T(request(40)), OP(opcode, b"reserved" * (n > 1)), PING()], [ACK])
for n, opcode in enumerate([11, 12, 13, 14, 15], start=1):
    fails(f"4.2.{n}", [T(request(40)), OP(opcode, b"reserved" * (n > 1)), PING()], [ACK])

# --- 5 fragmentation -----------------------------------------------------------------------

half = request(40)
fails("5.1", [PING(b"frag", fin=False), C(b"ment")], [])
fails("5.2", [PONG(b"frag", fin=False), C(b"ment")], [])
case("5.3", [T(half[:20], fin=False) + C(half[20:])], [ACK])
case("5.4", [FrameWise((T(half[:20], fin=False), C(half[20:])))], [ACK])
case("5.5", [Chop(T(half[:20], fin=False) + C(half[20:]))], [ACK])
case("5.6", [T(half[:20], fin=False) + PING(b"ping") + C(half[20:])], [pong(b"ping"), ACK])
case("5.7", [FrameWise((T(half[:20], fin=False), PING(b"ping"), C(half[20:])))],
     [pong(b"ping"), ACK])  # fmt: skip
case("5.8", [Chop(T(half[:20], fin=False) + PING(b"ping") + C(half[20:]))],
     [pong(b"ping"), ACK])  # fmt: skip
for n, send in [(9, bytes), (10, FrameWise), (11, Chop)]:
    frames = (C(b"orphan"), T(request(40)))
    shaped = b"".join(frames) if send is bytes else (FrameWise(frames) if send is FrameWise
                                                     else Chop(b"".join(frames)))  # fmt: skip
    fails(f"5.{n}", [shaped], [])
    frames = (C(b"orphan", fin=False), T(request(40)))
    shaped = b"".join(frames) if send is bytes else (FrameWise(frames) if send is FrameWise
                                                     else Chop(b"".join(frames)))  # fmt: skip
    fails(f"5.{n + 3}", [shaped], [])
fails("5.15", [T(half[:10], fin=False), C(half[10:20], fin=False), C(half[20:]),
               C(b"more", fin=False), T(request(40))], [ACK])  # fmt: skip
fails("5.16", [C(b"a", fin=False), C(b"b", fin=False), C(b"c")] * 2, [])
fails("5.17", [C(b"a"), C(b"b", fin=False), C(b"c")] * 2, [])
fails("5.18", [T(half[:20], fin=False), T(half[20:])], [])
five = [half[i : i + 8] for i in range(0, 40, 8)]
case("5.19", [T(five[0], fin=False), C(five[1], fin=False), PING(b"pong-1"),
              C(five[2], fin=False), C(five[3], fin=False), PING(b"pong-2"), C(five[4])],
     [pong(b"pong-1"), pong(b"pong-2"), ACK])  # fmt: skip
case("5.20", [FrameWise((T(five[0], fin=False), C(five[1], fin=False), PING(b"pong-1"),
                         C(five[2], fin=False), C(five[3], fin=False), PING(b"pong-2"),
                         C(five[4])))],
     [pong(b"pong-1"), pong(b"pong-2"), ACK])  # fmt: skip

# --- 6 UTF-8 handling ------------------------------------------------------------------------

KOSME = "κόσμε".encode()
case("6.1.1", [T(b"")], [INVALID_JSON])
case("6.1.2", [T(b"", fin=False) + C(b"", fin=False) + C(b"")], [INVALID_JSON])
case("6.1.3", [T(half[:20], fin=False) + C(b"", fin=False) + C(half[20:])], [ACK])
text_kosme = request(60, KOSME)
case("6.2.1", [T(text_kosme)], [ACK])
case("6.2.2", [fragments(text_kosme, 29)], [ACK])  # cut inside a character
case("6.2.3", [Chop(T(text_kosme))], [ACK])
case("6.2.4", [fragments(text_kosme, 1)], [ACK])
invalid_kosme = b'{"type":"heartbeat","pad":"' + KOSME + b'\xed\xa0\x80edited"}'
fails("6.3.1", [T(invalid_kosme)], [], 1007)
fails("6.3.2", [fragments(invalid_kosme, 1)], [], 1007)
# Fail fast: the first fragment that shows invalid UTF-8 fails the connection,
# before the message is complete (the rest is never needed).
head_ok = b'{"type":"heartbeat","pad":"' + KOSME
fails("6.4.1", [T(head_ok, fin=False) + C(b"\xf4\x90\x80\x80", fin=False)], [], 1007)
fails("6.4.2", [T(head_ok + b"\xf4", fin=False) + C(b"\x90\x80\x80", fin=False)], [], 1007)
fails("6.4.3", [Chop(T(head_ok, fin=False) + C(b"\xf4\x90\x80\x80", fin=False))], [], 1007)
fails("6.4.4", [FrameWise((T(head_ok, fin=False), C(b"\xf4\x90", fin=False)))], [], 1007)

VALID = [  # first and last sequences of each length, boundaries, noncharacters
    b"\xc2\x80", b"\xe0\xa0\x80", b"\xf0\x90\x80\x80", b"\x7f", b"\xdf\xbf", b"\xef\xbf\xbf",
    b"\xf4\x8f\xbf\xbf", b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd", b"\xef\xbf\xbe",
    b"\xef\xb7\x90", b"\xf0\x9f\xbf\xbe", KOSME,
]  # fmt: skip
INVALID = [  # 5- and 6-byte forms, beyond U+10FFFF, lone continuations, lonely starts,
    # incomplete sequences, impossible bytes, overlong forms, surrogates
    b"\xf8\x88\x80\x80\x80", b"\xfc\x84\x80\x80\x80\x80", b"\xf4\x90\x80\x80", b"\x80", b"\xbf",
    b"\x80\xbf\x80", b"\xc0 ", b"\xe0 ", b"\xf0 ", b"\xc0", b"\xe0\x80", b"\xf0\x80\x80",
    b"\xdf", b"\xef\xbf", b"\xfe", b"\xff", b"\xfe\xfe\xff\xff", b"\xc0\xaf", b"\xe0\x80\xaf",
    b"\xf0\x80\x80\xaf", b"\xc1\xbf", b"\xe0\x9f\xbf", b"\xf0\x8f\xbf\xbf", b"\xed\xa0\x80",
    b"\xed\xbf\xbf", b"\xed\xa0\x80\xed\xb0\x80", b"\xed\xaf\xbf\xed\xbf\xbf",
]  # fmt: skip
for n, sample in enumerate(VALID, start=1):
    case(f"6.5.{n}", [T(request(48, sample))], [ACK])
    case(f"6.6.{n}", [fragments(request(48, sample), 1)], [ACK])
for n, sample in enumerate(INVALID, start=1):
    fails(f"6.8.{n}", [T(b'{"type":"heartbeat","pad":"' + sample + b'"}')], [], 1007)
    fails(f"6.9.{n}", [fragments(b'{"type":"heartbeat","pad":"' + sample + b'"}', 1)], [], 1007)

# --- 7 close handling -----------------------------------------------------------------------

case("7.1.1", [T(request(40)), CLOSE(close_payload(1000))], [ACK, close(1000)], stays_open=False)
case("7.1.2", [CLOSE(close_payload(1000)), CLOSE(close_payload(1000))], [close(1000)],
     stays_open=False)  # fmt: skip
case("7.1.3", [CLOSE(close_payload(1000)), PING(b"after close")], [close(1000)], stays_open=False)
case("7.1.4", [CLOSE(close_payload(1000)), T(request(40))], [close(1000)], stays_open=False)
case("7.1.5", [T(half[:20], fin=False), CLOSE(close_payload(1000)), C(half[20:])],
     [close(1000)], stays_open=False)  # fmt: skip
case("7.1.6", [T(request(LIMIT)), PING(b"ping"), CLOSE(close_payload(1000))],
     [ACK, pong(b"ping"), close(1000)], stays_open=False)  # fmt: skip
case("7.3.1", [CLOSE()], [close(1000)], stays_open=False)
fails("7.3.2", [CLOSE(b"\x03")], [])
case("7.3.3", [CLOSE(close_payload(1000))], [close(1000)], stays_open=False)
case("7.3.4", [CLOSE(close_payload(1000, "Hello World!"))], [close(1000)], stays_open=False)
case("7.3.5", [CLOSE(close_payload(1000, "*" * 123))], [close(1000)], stays_open=False)
fails("7.3.6", [CLOSE(close_payload(1000, "*" * 124))], [])
fails("7.5.1", [CLOSE(close_payload(1000) + b"\xce\xba\xe1\xbd\xb9\xed\xa0\x80")], [], 1007)
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
               3000, 3999, 4000, 4999]  # fmt: skip
for n, code in enumerate(VALID_CODES, start=1):
    case(f"7.7.{n}", [CLOSE(close_payload(code))], [close(code)], stays_open=False)
for n, code in enumerate([0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999], start=1):
    fails(f"7.9.{n}", [CLOSE(close_payload(code))], [])
fails("7.13.1", [CLOSE(struct.pack("!H", 5000))], [])
fails("7.13.2", [CLOSE(struct.pack("!H", 65535))], [])

# --- 9 limits (scaled to max_message_bytes = 64 KiB) --------------------------------------

case("9.1.1", [T(request(LIMIT))], [ACK])
case("9.2.1", [B(b"x" * LIMIT)], [INVALID_MESSAGE])
for n, size in enumerate([LIMIT + 1, 256 << 10, 1 << 20, 16 << 20], start=2):
    case(f"9.1.{n}", [T(b"x" * size)], [TOO_LARGE, close(1009)], stays_open=False)
    case(f"9.2.{n}", [B(b"x" * size)], [TOO_LARGE, close(1009)], stays_open=False)
for n, size in enumerate([64, 256, 1024, 4096, 16384], start=1):
    case(f"9.3.{n}", [fragments(request(32768), size)], [ACK])
    case(f"9.4.{n}", [fragments(b"\x00" * 32768, size, OP_BINARY)], [INVALID_MESSAGE])
# A 64 KiB message in 64-byte pieces costs 64 KiB + 1023 * 16: over the limit.
case("9.3.6", [fragments(request(LIMIT), 64)], [TOO_LARGE, close(1009)], stays_open=False)
case("9.3.7", [fragments(b"x" * 2000, 1)], [TOO_LARGE, close(1009)], stays_open=False)
for n, size in enumerate([64, 128, 256, 512, 1024, 2048], start=1):
    case(f"9.5.{n}", [Chop(T(request(LIMIT)), size)], [ACK])
    case(f"9.6.{n}", [Chop(B(b"x" * LIMIT), size)], [INVALID_MESSAGE])
for n, size in enumerate([40, 64, 256, 1024], start=1):
    case(f"9.7.{n}", [T(request(size)) * 1000], [ACK] * 1000)
    case(f"9.8.{n}", [B(b"x" * size) * 1000], [INVALID_MESSAGE] * 1000)

# --- 12-13 permessage-deflate: offered, never agreed ----------------------------------------

DEFLATE_OFFERS = {
    "12.1": "permessage-deflate",
    "13.1": "permessage-deflate; client_no_context_takeover; server_max_window_bits=10",
    "13.7": "permessage-deflate; server_max_window_bits=9, permessage-deflate",
}


# --- running a case ---------------------------------------------------------------------------


def _pause() -> None:
    time.sleep(0.0005)


def _send(client: RawSocket, send: Send) -> None:
    if isinstance(send, bytes):
        client.send(send)
    elif isinstance(send, FrameWise):
        for one in send.frames:
            client.send(one)
            time.sleep(0.01)
    else:
        for start in range(0, len(send.data), send.size):
            client.send(send.data[start : start + send.size])
            _pause()


def _observed(client: RawSocket) -> list[Expected]:
    seen: list[Expected] = []
    for found in client.frames_to_end():
        if found.opcode == OP_TEXT:
            message = json.loads(found.payload)
            if message["type"] == "user_status_change":
                continue  # another session of this module came or went
            kind = message["type"]
            seen.append(f"error:{message['code']}" if kind == "error" else kind)
        elif found.opcode == OP_PONG:
            seen.append(pong(found.payload))
        elif found.opcode == OP_CLOSE:
            seen.append(close(found.close_code or 1005))
        else:
            seen.append(f"opcode {found.opcode}")
    return seen


def _user(case_id: str) -> str:
    return "c-" + case_id


@pytest.mark.parametrize("spec", CASES, ids=[c.id for c in CASES])
def test_case(port: int, spec: Case) -> None:
    with RawSocket(port, timeout=10) as client:
        client.open(f"/ws?userId={_user(spec.id)}")
        try:
            for send in spec.sends:
                _send(client, send)
            if spec.stays_open:
                client.send(CLOSE(close_payload(1000)))
        except (BrokenPipeError, ConnectionResetError):
            assert not spec.stays_open  # the server failed the connection under it
        expected = [*spec.expect, close(1000)] if spec.stays_open else list(spec.expect)
        assert _observed(client) == expected


@pytest.mark.parametrize(
    "offer", list(DEFLATE_OFFERS.values()), ids=[f"{k}.1" for k in DEFLATE_OFFERS]
)
def test_deflate_offers_are_ignored(port: int, offer: str) -> None:
    """12.x/13.x: the 101 agrees to no extension; plain messages are served."""
    with RawSocket(port) as client:
        client.send(upgrade_head("/ws?userId=deflate", f"Sec-WebSocket-Extensions: {offer}"))
        head = client.read_head()
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"sec-websocket-extensions" not in head.lower()
        assert client.next_frame().json()["type"] == "welcome"
        client.send(T(request(40)) + CLOSE(close_payload(1000)))
        assert _observed(client) == [ACK, close(1000)]


@pytest.mark.parametrize(
    "offer", list(DEFLATE_OFFERS.values()), ids=[f"{k}.2" for k in DEFLATE_OFFERS]
)
def test_compressed_frames_fail_without_an_agreed_extension(port: int, offer: str) -> None:
    """12.x/13.x: an RSV1 (compressed) frame without an agreed extension fails (1002)."""
    with RawSocket(port) as client:
        client.send(upgrade_head("/ws?userId=deflate", f"Sec-WebSocket-Extensions: {offer}"))
        assert client.read_head().startswith(b"HTTP/1.1 101 ")
        assert client.next_frame().json()["type"] == "welcome"
        compressed = bytes.fromhex("f248cdc9c95728cf2fca490100")  # deflate("Hello world!")
        client.send(T(compressed, rsv=4))
        assert _observed(client) == [close(1002)]


# --- the opening handshake -----------------------------------------------------------------

HEAD = upgrade_head("/ws?userId=handshake")
HANDSHAKES = [
    ("H.1", HEAD, 101),
    ("H.2", upgrade_head("/ws?userId=handshake", "Sec-WebSocket-Protocol: chat, superchat"), 101),
    ("H.3", HEAD.replace(b"Upgrade: websocket", b"Upgrade: WebSocket"), 101),
    ("H.4", HEAD.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"), 101),
    ("H.5", HEAD.replace(b"Connection: Upgrade", b"Connection: keep-alive\r\nConnection: Upgrade"),
     101),
    ("H.6", HEAD.replace(b"GET /ws", b"GET http://127.0.0.1/ws"), 101),
    ("H.7", HEAD.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
    ("H.8", HEAD.replace(b"Sec-WebSocket-Version: 13\r\n", b""), 426),
    ("H.9", HEAD.replace(f"Sec-WebSocket-Key: {KEY}\r\n".encode(), b""), 400),
    ("H.10", HEAD.replace(KEY.encode(), base64.b64encode(b"fifteen bytes!!")), 400),
    ("H.11", HEAD.replace(b"Host: x\r\n", b""), 400),
    ("H.12", HEAD.replace(b"Host: x\r\n", b"Host: x\r\nHost: y\r\n"), 400),
    ("H.13", HEAD.replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 13\r\n"
                          b"Sec-WebSocket-Version: 13"), 400),
    ("H.14", HEAD.replace(f"Sec-WebSocket-Key: {KEY}".encode(), f"Sec-WebSocket-Key: {KEY}\r\n"
                          "Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==".encode()), 400),
    ("H.15", HEAD.replace(b"Connection: Upgrade", b"Connection: keep-alive"), 400),
    ("H.16", HEAD.replace(b"Host: x\r\n", b"Host: x\r\n folded\r\n"), 400),
    ("H.17", HEAD.replace(b"Host: x\r\n", b"Host : x\r\n"), 400),
    # Not WebSocket upgrades on this path: hypercorn answers them as HTTP.
    ("H.18", HEAD.replace(b"Upgrade: websocket\r\n", b""), 404),
    ("H.19", HEAD.replace(b"GET", b"POST"), 404),
    ("H.20", HEAD.replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
]  # fmt: skip


@pytest.mark.parametrize(("head", "status"), [(h, s) for _, h, s in HANDSHAKES],
                         ids=[i for i, _, _ in HANDSHAKES])  # fmt: skip
def test_handshake(port: int, head: bytes, status: int) -> None:
    with RawSocket(port) as client:
        client.send(head)
        answer = client.read_head()
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer
        if status == 426:
            assert b"sec-websocket-version: 13" in answer.lower()
        if status != 101:
            return
        # RFC 6455 4.2.2: the accept key (RFC 6455 1.3's example), no subprotocol chosen.
        assert b"\r\nsec-websocket-accept: " + ACCEPT + b"\r\n" in answer
        assert b"sec-websocket-protocol" not in answer.lower()
        assert client.next_frame().json()["type"] == "welcome"


def test_frames_sent_with_the_handshake_are_read(port: int) -> None:
    """H.21: a client may send frames right behind its request head."""
    with RawSocket(port) as client:
        client.send(upgrade_head("/ws?userId=eager") + T(request(40)) + CLOSE(close_payload(1000)))
        assert client.read_head().startswith(b"HTTP/1.1 101 ")
        assert client.next_frame().json()["type"] == "welcome"
        assert _observed(client) == [ACK, close(1000)]


def test_server_frames_are_never_masked_nor_fragmented(port: int) -> None:
    """RFC 6455 5.1: what the server sends is unmasked (``parse_frame`` refuses a mask bit)."""
    with RawSocket(port) as client:
        client.open("/ws?userId=unmasked")
        client.send(T(request(LIMIT)) + CLOSE(close_payload(1000)))
        frames = client.frames_to_end()
        assert all(f.fin and f.rsv == 0 for f in frames)
        assert parse_frame(b"\x81\x00") is not None
