"""``GetMultipleUserStatus`` in plain gRPC, answered past connectrpc's per-call machinery.

A bulk read is the gRPC API's hot call. connectrpc handles every call the same
general way (protocol negotiation, interceptors, a request stream, a deadline
scope, a disconnect watch), which costs more than the answer of a hundred users
(issue 13's profile: about a fifth of the call). :class:`FastBulkStatus` answers
the common case itself — a binary gRPC call over HTTP/2, one uncompressed
message, no compressed answer wanted — with the service's own method, and sends
exactly what connectrpc would have (same headers, envelope and trailers; a test
holds them equal).

Everything else goes to connectrpc untouched: another protocol or codec,
compression, a body that is not one well-formed message, and every refusal. The
call is read-only, so a refusal is simply asked again of connectrpc with the
request replayed (the messages received, then the receive's own error if it had
one): every error is answered by the code that always answered it. A deadline
(``grpc-timeout``) is kept: past it, connectrpc is handed the call with its
deadline already spent and answers DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import math
import re
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

import trio

from .asgi import MAX_BODY, Message, Receive, Scope, Send
from .grpc_gen.presence.v1 import presence_pb as pb
from .grpc_guard import CODECS

PATH = "/presence.v1.PresenceService/GetMultipleUserStatus"
_CONTENT_TYPES = frozenset({b"application/grpc", b"application/grpc+proto"})
_ENVELOPE = struct.Struct(">BI")
# grpc-timeout (gRPC over HTTP/2): at most eight digits and a unit.
_TIMEOUT = re.compile(rb"([0-9]{1,8})([HMSmun])")
_UNIT_SECONDS = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
# What connectrpc could answer in (see COMPRESSIONS); the first one the client
# accepts is chosen, so a client that prefers gzip is left to connectrpc.
_COMPRESSIONS = frozenset({b"identity", b"gzip"})
_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/grpc+proto"), (b"grpc-encoding", b"identity")],
    "trailers": True,
}
_TRAILERS: Message = {
    "type": "http.response.trailers",
    "headers": [(b"grpc-status", b"0")],
    "more_trailers": False,
}
_BINARY = CODECS[0]

Answer = Callable[
    [Mapping[str, str], pb.GetMultipleUserStatusRequest],
    Awaitable[pb.GetMultipleUserStatusResponse],
]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class FastBulkStatus:
    """Answers ``GetMultipleUserStatus`` calls it can, hands the rest to ``fallback``."""

    def __init__(self, answer: Answer, fallback: App) -> None:
        self._answer = answer
        self._fallback = fallback
        self.answered = 0  # calls answered here (a test checks the path is taken)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one call. ``receive`` is the gateway's (body bounds as gRPC statuses)."""
        fit = _fit(scope)
        if fit is None:
            await self._fallback(scope, receive, send)
            return
        headers, timeout = fit
        recorded = _Recorded(receive)
        response = None
        expired = False
        try:
            body = await recorded.body()
            request = _one_message(body)
            if request is not None:
                with trio.move_on_after(timeout) as deadline:
                    response = await self._answer(headers, request)
                expired = deadline.cancelled_caught
        except Exception:
            response = None  # refused: connectrpc answers it (see the module)
        if response is None:
            if expired:
                scope = {**scope, "headers": _spent_deadline(scope["headers"])}
            await self._fallback(scope, recorded.replay(), send)
            return
        data = _BINARY.encode(response)
        self.answered += 1
        await send(_START)
        await send({"type": "http.response.body", "body": _ENVELOPE.pack(0, len(data)) + data})
        await send(_TRAILERS)


def _fit(scope: Scope) -> tuple[dict[str, str], float] | None:
    """(headers, seconds to the deadline) of a call this path answers, else None."""
    if (
        scope.get("http_version") != "2"
        or scope.get("method") != "POST"
        or "http.response.trailers" not in scope.get("extensions", {})
    ):
        return None
    content_type = encoding = accept = timeout_header = None
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value
        elif name == b"grpc-encoding":
            encoding = value
        elif name == b"grpc-accept-encoding":
            accept = value
        elif name == b"grpc-timeout":
            timeout_header = value
        elif name == b"authorization":
            if "authorization" in headers:
                return None  # which one counts is connectrpc's call
            try:
                headers["authorization"] = value.decode()
            except UnicodeDecodeError:
                return None
    if content_type not in _CONTENT_TYPES or encoding not in (None, b"identity"):
        return None
    if accept is not None:
        chosen = next((n for n in map(bytes.strip, accept.split(b",")) if n in _COMPRESSIONS), None)
        if chosen not in (None, b"identity"):
            return None
    timeout = math.inf
    if timeout_header is not None:
        found = _TIMEOUT.fullmatch(timeout_header)
        if found is None:
            return None
        timeout = int(found[1]) * _UNIT_SECONDS[found[2]]
    return headers, timeout


def _one_message(body: bytes) -> pb.GetMultipleUserStatusRequest | None:
    """The request in ``body`` if it is exactly one uncompressed envelope."""
    if len(body) < _ENVELOPE.size:
        return None
    flags, size = _ENVELOPE.unpack_from(body)
    if flags != 0 or size != len(body) - _ENVELOPE.size or size > MAX_BODY:
        return None
    message: pb.GetMultipleUserStatusRequest = _BINARY.decode(
        body[_ENVELOPE.size :], pb.GetMultipleUserStatusRequest
    )
    return message


def _spent_deadline(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(n, b"1n" if n == b"grpc-timeout" else v) for n, v in headers]


class _Recorded:
    """A receive whose messages (and error) can be replayed to another reader."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._messages: list[Message] = []
        self._error: Exception | None = None

    async def body(self) -> bytes:
        chunks = []
        while True:
            try:
                message = await self._receive()
            except Exception as exc:
                self._error = exc
                raise
            self._messages.append(message)
            if message["type"] != "http.request":
                raise _Disconnected
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)

    def replay(self) -> Receive:
        waiting = deque(self._messages)
        error = self._error

        async def receive_again() -> Message:
            if waiting:
                return waiting.popleft()
            if error is not None:
                raise error
            return await self._receive()

        return receive_again


class _Disconnected(Exception):
    """The client left before its request was read."""
