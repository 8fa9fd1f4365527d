"""The opening handshake of the direct path (RFC 6455 4.2, over RFC 7230 message syntax).

Only what the listener hands over: a complete ``GET`` request head that asks
for ``/ws`` with ``Upgrade: websocket``. The head is checked as RFC 6455 4.2.1
asks and answered with the 101 (no extension and no subprotocol is ever
agreed: offers are ignored), or refused with an HTTP status that says why.

Header fields follow RFC 7230 3.2: repeated lines of a list-valued field
(``Connection``, ``Upgrade``) make one comma-separated list, and a field that
must appear once (``Host``, ``Sec-WebSocket-Key``, ``Sec-WebSocket-Version``,
and the ``Origin`` and ``Authorization`` the gateway trusts) is refused when
repeated: two keys or two versions have no single meaning (RFC 6455 4.2.1,
11.3.1, 11.3.5), and picking one is how a proxy and a server come to disagree.
"""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qsl, urlsplit

from attrs import frozen

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_SINGLE = frozenset(
    {"host", "sec-websocket-key", "sec-websocket-version", "origin", "authorization"}
)


class HandshakeError(Exception):
    """An upgrade request this server cannot accept; ``response`` says why in HTTP."""

    def __init__(self, status: int, reason: str, extra: bytes = b"") -> None:
        super().__init__(reason)
        self.status = status
        body = reason.encode()
        phrase = "Upgrade Required" if status == 426 else "Bad Request"
        self.response = (
            f"HTTP/1.1 {status} {phrase}\r\n".encode()
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


def request_path(target: str) -> str:
    """The path of a request target in origin-form (``/ws?..``) or absolute-form
    (``http://host:port/ws?..``, RFC 7230 5.3.2); "" for anything else."""
    if target.startswith("/"):
        return target.split("?", 1)[0]
    parts = urlsplit(target)
    if parts.scheme.lower() in ("http", "https", "ws", "wss") and parts.netloc:
        return parts.path or "/"
    return ""


def parse_headers(lines: list[str]) -> dict[str, str]:
    """Header lines as one value per lower-case name; raises HandshakeError.

    Repeated list-valued fields are joined with ``", "`` (RFC 7230 3.2.2);
    repeated single fields, obsolete line folding and whitespace before the
    colon are refused (RFC 7230 3.2.4).
    """
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        # A field name is one token: no whitespace in or around it (RFC 7230 3.2.4 refuses
        # whitespace before the colon, and a line starting with it is obsolete folding).
        if not sep or not name or " " in name or "\t" in name:
            raise HandshakeError(400, "malformed header line")
        key = name.lower()
        value = value.strip(" \t")
        if key not in headers:
            headers[key] = value
        elif key in _SINGLE:
            raise HandshakeError(400, f"duplicate {name} header")
        else:
            headers[key] = f"{headers[key]}, {value}"
    return headers


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",")}


def accept_upgrade(head: bytes) -> Upgrade:
    """Check a ``GET ... HTTP/1.1`` upgrade request head; raises HandshakeError."""
    end = head.find(b"\r\n\r\n")
    if end < 0:
        raise HandshakeError(400, "incomplete request head")
    lines = head[:end].decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    target, _, version = rest.partition(" ")
    if method != "GET" or version != "HTTP/1.1" or request_path(target) != "/ws":
        raise HandshakeError(400, "not a GET /ws HTTP/1.1 request")
    headers = parse_headers(lines[1:])
    if "host" not in headers:
        raise HandshakeError(400, "missing Host header")
    if "websocket" not in _tokens(headers.get("upgrade", "")):
        raise HandshakeError(400, "not a WebSocket upgrade")
    if "upgrade" not in _tokens(headers.get("connection", "")):
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
