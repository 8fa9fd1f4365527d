"""Small ASGI helpers: headers, query strings, request bodies and JSON responses."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson
import trio
from attrs import frozen

from ..protocol import ErrorCode

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


def headers_of(scope: Scope) -> dict[str, str]:
    """Request headers, lower-case names; a repeated header keeps its last value."""
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }


def query_of(scope: Scope) -> dict[str, str]:
    """Query parameters; a repeated parameter keeps its last value."""
    return dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))


# A request body, for any route (REST admin bodies, RPC messages), is at most this
# big: the largest legitimate one, 1000 user ids of 128 characters, is ~135 KB.
MAX_BODY = 1 << 20


class BodyRefused(Exception):
    """A request body broke a limit: too slow (HTTP 408) or too large (413)."""

    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@frozen
class BodyLimits:
    """How much and how slowly a client may send a request body."""

    max_bytes: int
    # Seconds from the start of the request to the body's last byte.
    total_timeout: float
    # Seconds of silence allowed between two pieces of the body.
    idle_timeout: float


def bounded_receive(receive: Receive, limits: BodyLimits) -> Receive:
    """``receive`` for one request, refusing a body that breaks ``limits``.

    Until the body is complete, each call waits at most until the earlier of the
    total and the idle deadline and raises :class:`BodyRefused` past either, or
    once the body is larger than ``limits.max_bytes`` (nothing past the limit is
    kept). After the body, calls pass straight through: waiting for the
    disconnect of a long answer (a stream) is not bounded. Cancellation: a
    cancelled call loses nothing (the server's queue keeps the message).
    """
    deadline = trio.current_time() + limits.total_timeout
    received = 0
    complete = False

    async def receive_bounded() -> Message:
        nonlocal received, complete
        if complete:
            return await receive()
        with trio.move_on_at(min(deadline, trio.current_time() + limits.idle_timeout)):
            message = await receive()
            if message["type"] != "http.request":
                complete = True
                return message
            received += len(message.get("body", b""))
            complete = not message.get("more_body", False)
            if received <= limits.max_bytes:
                return message
        if received > limits.max_bytes:
            if not complete:
                await _discard_rest(receive, deadline, limits)
            complete = True
            raise BodyRefused(
                413, ErrorCode.TOO_LARGE, f"request bodies are limited to {limits.max_bytes} bytes"
            )
        waited = "the request body did not arrive in time"
        raise BodyRefused(
            408,
            ErrorCode.INVALID_MESSAGE,
            f"{waited}: at most {limits.total_timeout:g} s in all"
            f" and {limits.idle_timeout:g} s between pieces",
        )

    return receive_bounded


# A refused body is read on (and dropped) up to this many times the limit, so that a
# client still sending it reads the 413 rather than a reset; a client sending more
# than that is not one that will read answers.
_DISCARD_FACTOR = 4


async def _discard_rest(receive: Receive, deadline: float, limits: BodyLimits) -> None:
    """Read and drop the rest of a refused body: until it ends, the body deadline or
    an idle pause passes, or :data:`_DISCARD_FACTOR` times the limit was dropped."""
    budget = _DISCARD_FACTOR * limits.max_bytes
    while budget > 0:
        with trio.move_on_at(min(deadline, trio.current_time() + limits.idle_timeout)):
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return
            budget -= len(message.get("body", b""))
            continue
        return  # the deadline or a pause: the client is not sending it any more


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra_headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": headers + (extra_headers or []),
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, payload: object) -> None:
    body = orjson.dumps(payload)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def respond_error(send: Send, status: int, code: ErrorCode, message: str) -> None:
    await respond_json(
        send, status, {"success": False, "error": {"code": code.value, "message": message}}
    )
