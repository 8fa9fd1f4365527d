"""The direct path's RFC 6455 pieces, held against wsproto as a reference client."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)

from presence_actors.gateway.frames import FrameReader, Kind, close_frame, frame
from presence_actors.gateway.handshake import HandshakeError, accept_upgrade


def client() -> Connection:
    return Connection(ConnectionType.CLIENT)


def read_all(reader: FrameReader, data: bytes, chunk: int) -> list[object]:
    found: list[object] = []
    for start in range(0, len(data), chunk):
        reader.feed(data[start : start + chunk])
        while (received := reader.next()) is not None:
            found.append(received)
    return found


messages = st.lists(
    st.one_of(
        st.text(max_size=300).map(lambda t: ("text", t)),
        st.binary(max_size=300).map(lambda b: ("binary", b)),
        st.binary(max_size=100).map(lambda b: ("ping", b)),
    ),
    max_size=8,
)


@given(messages=messages, chunk=st.integers(1, 64), fragment=st.integers(1, 50))
def test_whatever_a_client_sends_is_read_back(
    messages: list[tuple[str, object]], chunk: int, fragment: int
) -> None:
    sender = client()
    wire = b""
    for kind, data in messages:
        if kind == "ping":
            wire += sender.send(Ping(payload=data))  # type: ignore[arg-type]
            continue
        event = TextMessage if kind == "text" else BytesMessage
        pieces = [data[i : i + fragment] for i in range(0, len(data), fragment)] or [data]  # type: ignore[index]
        for index, piece in enumerate(pieces):
            wire += sender.send(event(data=piece, message_finished=index == len(pieces) - 1))  # type: ignore[operator]
    wire += sender.send(CloseConnection(code=1000, reason="bye"))
    received = read_all(FrameReader(1 << 20), wire, chunk)
    expected = [
        (Kind.TEXT if k == "text" else Kind.BINARY if k == "binary" else Kind.PING, d)
        for k, d in messages
    ]
    got = [(r.kind, r.data) for r in received[:-1]]  # type: ignore[attr-defined]
    assert got == expected
    assert (received[-1].kind, received[-1].code, received[-1].reason) == (Kind.CLOSE, 1000, "bye")  # type: ignore[attr-defined]


def test_frames_the_server_writes_are_what_wsproto_reads() -> None:
    for payload in (b"", b"x" * 125, b"y" * 126, b"z" * 70_000):
        peer = Connection(ConnectionType.CLIENT)
        peer.receive_data(frame(payload, 0x2))
        [event] = list(peer.events())
        assert isinstance(event, BytesMessage)
        assert event.data == payload
    peer = Connection(ConnectionType.CLIENT)
    peer.receive_data(close_frame(4002, "heartbeat timeout"))
    [event] = list(peer.events())
    assert (event.code, event.reason) == (4002, "heartbeat timeout")
    assert len(close_frame(1000, "é" * 200)) <= 127  # a control frame stays small


def masked(opcode: int, payload: bytes, first: int | None = None, mask: bool = True) -> bytes:
    key = b"\x01\x02\x03\x04"
    body = bytes(b ^ key[i % 4] for i, b in enumerate(payload)) if mask else payload
    head = bytes(
        ((0x80 | opcode) if first is None else first, (0x80 if mask else 0) | len(payload))
    )
    return head + (key if mask else b"") + body


@pytest.mark.parametrize(
    ("wire", "kind", "code"),
    [
        (masked(0x1, b"\xff\xfe"), Kind.FAILED, 1007),
        (masked(0x1, b"hi", mask=False), Kind.FAILED, 1002),
        (masked(0x1, b"hi", first=0x80 | 0x40 | 0x1), Kind.FAILED, 1002),  # RSV1
        (masked(0x3, b""), Kind.FAILED, 1002),  # unknown opcode
        (masked(0x0, b"orphan"), Kind.FAILED, 1002),  # continuation first
        (masked(0x9, b"x" * 126), Kind.FAILED, 1002),  # control frame too long
        (masked(0x9, b"", first=0x09), Kind.FAILED, 1002),  # fragmented control frame
        (masked(0x8, b"\x03"), Kind.FAILED, 1002),  # one-byte close payload
        (masked(0x8, struct.pack("!H", 1005)), Kind.FAILED, 1002),
        (masked(0x8, struct.pack("!H", 999)), Kind.FAILED, 1002),
        (masked(0x8, struct.pack("!H", 1000) + b"\xff"), Kind.FAILED, 1007),
        (masked(0x8, struct.pack("!H", 4001) + b"ok"), Kind.CLOSE, 4001),
        (masked(0x8, b""), Kind.CLOSE, 1005),
    ],
)
def test_protocol_violations_are_named(wire: bytes, kind: Kind, code: int) -> None:
    reader = FrameReader(1024)
    reader.feed(wire + masked(0x1, b"after"))
    received = reader.next()
    assert received is not None
    assert (received.kind, received.code) == (kind, code)
    assert reader.next() is None  # nothing after the end


def test_a_message_over_the_limit_is_refused_before_it_arrives() -> None:
    reader = FrameReader(100)
    header = bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 10**9) + b"\x00\x00\x00\x00"
    reader.feed(header)
    received = reader.next()
    assert received is not None
    assert received.kind is Kind.TOO_BIG
    fragments = FrameReader(100)
    fragments.feed(masked(0x1, b"a" * 60, first=0x01) + masked(0x0, b"b" * 60))
    received = fragments.next()
    assert received is not None
    assert received.kind is Kind.TOO_BIG


def test_the_handshake_is_what_a_client_accepts() -> None:
    peer = WSConnection(ConnectionType.CLIENT)
    request = peer.send(Request(host="example", target="/ws?userId=al%20ice&deviceId=d"))
    upgrade = accept_upgrade(request + b"early")
    assert upgrade.query == {"userId": "al ice", "deviceId": "d"}
    assert upgrade.headers["host"] == "example"
    assert upgrade.rest == b"early"
    peer.receive_data(upgrade.response)
    assert isinstance(next(peer.events()), AcceptConnection)


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ((b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
        ((b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Key: x"), 400),
        ((b"Host: example\r\n", b""), 400),
        ((b"Connection: Upgrade", b"Connection: keep-alive"), 400),
    ],
)
def test_bad_handshakes_get_an_http_answer(change: tuple[bytes, bytes], status: int) -> None:
    head = (
        b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with pytest.raises(HandshakeError) as refused:
        accept_upgrade(head.replace(*change))
    assert refused.value.response.startswith(f"HTTP/1.1 {status} ".encode())


HEAD = (
    b"GET /ws HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.mark.parametrize(
    "extra",
    [
        b"Sec-WebSocket-Version: 13\r\n",
        b"Sec-WebSocket-Version: 8\r\n",
        b"Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n",
        b"Host: other\r\n",
    ],
)
def test_a_repeated_single_header_is_refused(extra: bytes) -> None:
    """RFC 6455 4.2.1 / 11.3: one key, one version; RFC 7230 5.4: one Host."""
    with pytest.raises(HandshakeError, match="duplicate") as refused:
        accept_upgrade(HEAD[:-2] + extra + b"\r\n")
    assert refused.value.response.startswith(b"HTTP/1.1 400 ")


def test_list_headers_split_over_lines_are_one_list() -> None:
    """RFC 7230 3.2.2: ``Connection: keep-alive`` + ``Connection: Upgrade`` is one list."""
    for split, joined in [
        (b"Connection: keep-alive\r\nConnection: Upgrade\r\n", "keep-alive, Upgrade"),
        (b"Connection: Upgrade\r\nConnection: keep-alive\r\n", "Upgrade, keep-alive"),
    ]:
        upgrade = accept_upgrade(HEAD.replace(b"Connection: Upgrade\r\n", split))
        assert upgrade.headers["connection"] == joined
        assert upgrade.response.startswith(b"HTTP/1.1 101 ")


def test_an_absolute_form_target_is_accepted() -> None:
    """RFC 7230 5.3.2: ``GET http://host:port/ws?... HTTP/1.1``."""
    upgrade = accept_upgrade(HEAD.replace(b"GET /ws ", b"GET http://example:8080/ws?userId=a "))
    assert upgrade.query == {"userId": "a"}
    with pytest.raises(HandshakeError):
        accept_upgrade(HEAD.replace(b"GET /ws ", b"GET http://example:8080/other?userId=a "))


@pytest.mark.parametrize(
    "line",
    [b"Bad Name: x\r\n", b"Name : x\r\n", b" folded continuation\r\n", b"no colon\r\n"],
)
def test_malformed_header_lines_are_refused(line: bytes) -> None:
    with pytest.raises(HandshakeError, match="malformed"):
        accept_upgrade(HEAD[:-2] + line + b"\r\n")


def test_fragments_cost_their_frames_against_the_limit() -> None:
    """A message of N frames costs its payload plus FRAME_COST per frame after the first."""
    limit = 100
    # 5 frames of 10 bytes: 50 + 4 * 16 = 114 > 100.
    wire = masked(0x1, b"a" * 10, first=0x01) + masked(0x0, b"a" * 10, first=0x00) * 3
    reader = FrameReader(limit)
    reader.feed(wire + masked(0x0, b"a" * 10))
    received = reader.next()
    assert received is not None
    assert received.kind is Kind.TOO_BIG
    # The same 50 bytes in 2 frames: 50 + 16 = 66, fine.
    reader = FrameReader(limit)
    reader.feed(masked(0x1, b"a" * 25, first=0x01) + masked(0x0, b"a" * 25))
    received = reader.next()
    assert received is not None
    assert (received.kind, received.data) == (Kind.TEXT, "a" * 50)


def test_empty_fragments_are_not_free_and_their_number_is_capped() -> None:
    reader = FrameReader(1 << 20, max_fragments=1024)
    reader.feed(masked(0x1, b"", first=0x01) + masked(0x0, b"", first=0x00) * 1024)
    received = reader.next()
    assert received is not None
    assert received.kind is Kind.TOO_BIG  # the 1025th frame
    empty = FrameReader(1024, max_fragments=10**6)
    empty.feed(masked(0x1, b"", first=0x01) + masked(0x0, b"", first=0x00) * 65)
    received = empty.next()
    assert received is not None
    assert received.kind is Kind.TOO_BIG  # 65 * 16 > 1024, with no payload at all


def test_invalid_utf8_fails_at_the_fragment_that_shows_it() -> None:
    reader = FrameReader(1024)
    reader.feed(masked(0x1, "é".encode() + b"\xff", first=0x01))
    received = reader.next()
    assert received is not None
    assert (received.kind, received.code) == (Kind.FAILED, 1007)


def _masked(first: int, payload: bytes, *, masked: bool = True) -> bytes:
    mask = b"\x11\x22\x33\x44"
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes((first, (0x80 if masked else 0) | len(payload))) + (
        mask + body if masked else payload
    )


_reads = st.one_of(
    st.binary(max_size=40).map(lambda p: _masked(0x81, p)),  # text, maybe invalid UTF-8
    st.text(max_size=40).map(lambda t: _masked(0x81, t.encode())),
    st.binary(max_size=20).map(lambda p: _masked(0x82, p)),  # binary
    st.binary(max_size=20).map(lambda p: _masked(0x01, p)),  # a first fragment
    st.binary(max_size=20).map(lambda p: _masked(0x80, p)),  # a last fragment
    st.binary(max_size=20).map(lambda p: _masked(0xC1, p)),  # a reserved bit
    st.binary(max_size=20).map(lambda p: _masked(0x81, p, masked=False)),
    st.binary(max_size=30),  # whatever bytes, cut anywhere
)


@given(reads=st.lists(_reads, max_size=6), limit=st.sampled_from([8, 125, 65536]))
def test_a_read_taken_whole_is_what_the_general_reader_makes_of_it(
    reads: list[bytes], limit: int
) -> None:
    """The direct path's shortcut (one small text frame per read, decoded from the
    read itself) answers exactly what feeding the read would: the same messages,
    the same refusals (size, UTF-8, masking, reserved bits, fragments)."""

    def through(shortcut: bool) -> list[object]:
        reader = FrameReader(limit)
        found: list[object] = []
        for data in reads:
            if shortcut:
                text = reader.whole_text(memoryview(bytearray(data)))
                if text is not None:
                    found.append(("text", text))
                    continue
            else:
                reader.feed(data)
            while (received := reader.next()) is not None:
                found.append(("text", received.data) if received.kind is Kind.TEXT else received)
        return found

    assert through(shortcut=True) == through(shortcut=False)
