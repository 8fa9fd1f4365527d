"""Reading what an HTTP request carries: path and query parameters, and JSON bodies.

Every parser is strict and bounded: plain ASCII digits of a bounded length,
moments within what ISO-8601 can write, user ids checked with the reason for a
refusal, and refused values echoed only in part. A refusal is an
:class:`HttpError` naming the parameter, never an exception from deeper down.
"""

from __future__ import annotations

import re

import orjson
import trio

from ..model import MAX_USER_ID, Status, parse_timestamp, shown, user_id_problem
from ..protocol import ErrorCode
from .asgi import Receive

# Query integers: plain ASCII digits (str.isdigit also takes '²' and other scripts'
# digits, which int() then refuses).
_DIGITS = re.compile(r"[0-9]+")
# Digits converted at most: int() of 4,301+ digits raises, and is quadratic below
# that; a longer number is beyond every range here anyway.
_MAX_DIGITS = 18
# unix milliseconds of 9999-12-31T23:59:59.999Z, the last moment ISO-8601 can write.
_LAST_MOMENT = 253_402_300_799_999
# An ISO-8601 timestamp with fractions and an offset is under 40 characters.
_MAX_ISO = 64
# Cursors this server makes are a few dozen characters; anything far longer is not one.
_MAX_CURSOR = 512


class HttpError(Exception):
    def __init__(self, status: int, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# Bodies up to this size are parsed in the event loop (well under a millisecond).
_PARSE_INLINE = 64 * 1024


async def json_body(receive: Receive) -> object:
    """The request's JSON body; 400 when it is not JSON.

    The receive the app hands in is bounded (size and time, see
    :func:`.asgi.bounded_receive`), and orjson refuses nesting deeper than 1024
    levels without recursing into it, so no body can exhaust memory or the stack.
    """
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    try:
        if len(body) <= _PARSE_INLINE:
            return orjson.loads(body)
        # A megabyte of nested lists takes orjson ~170 ms with the GIL held; in a
        # worker thread the event loop still gets the interpreter every 5 ms.
        return await trio.to_thread.run_sync(orjson.loads, body)
    except orjson.JSONDecodeError as exc:
        raise HttpError(400, ErrorCode.INVALID_JSON, f"invalid JSON: {exc}") from None


def user_id_param(value: object, name: str) -> str:
    problem = user_id_problem(value, name)
    if problem is not None:
        raise HttpError(400, ErrorCode.INVALID_USER_ID, problem)
    assert isinstance(value, str)
    return value


# Valid user ids joined by commas (no id has one), checked in one pass: a bulk
# request's hundreds of ids are then looked at one by one only to say which is wrong.
_ID = rf"[A-Za-z0-9_.:@-]{{1,{MAX_USER_ID}}}"
_ID_LIST = re.compile(rf"{_ID}(?:,{_ID})*")


def user_ids_problem(user_ids: tuple[str, ...] | list[str], name: str) -> str | None:
    """What is wrong with the first invalid id of ``user_ids`` (``name[index]``), or None.

    The same sentence as :func:`user_id_problem` gives for that id; the list is
    not empty and its size bounded by the caller.
    """
    joined = ",".join(user_ids)
    # The count keeps an id with a comma in it (possible over gRPC) from passing as two.
    if joined.count(",") == len(user_ids) - 1 and _ID_LIST.fullmatch(joined) is not None:
        return None
    for index, user_id in enumerate(user_ids):
        problem = user_id_problem(user_id or None, f"{name}[{index}]")
        if problem is not None:
            return problem
    raise AssertionError("an id the list check refused passed on its own")


def status_param(value: str | None) -> Status | None:
    if not value:
        return None
    try:
        return Status(value)
    except ValueError:
        raise HttpError(
            400,
            ErrorCode.INVALID_STATUS,
            f"status must be one of online, busy, away, offline, got {shown(value)}",
        ) from None


def integer_param(
    query: dict[str, str],
    name: str,
    default: int,
    *,
    most: int,
    over: ErrorCode | None = None,
) -> int:
    """The integer parameter ``name`` (``default`` when absent or empty), 1 to ``most``.

    Past ``most`` it is refused with ``over``, or taken as ``most`` when ``over``
    is None (lists that say "at most N"). Anything but plain ASCII digits is
    INVALID_MESSAGE naming the parameter.
    """
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    value = _natural(raw)
    if value is None or value < 1:
        raise HttpError(
            400,
            ErrorCode.INVALID_MESSAGE,
            f"{name} must be an integer from 1 to {most}, got {shown(raw)}",
        )
    if value > most and over is not None:
        raise HttpError(400, over, f"{name} must be at most {most}, got {shown(raw)}")
    return min(value, most)


def _natural(raw: str) -> int | None:
    """The value of plain ASCII digits (a bound past every range when there are too
    many to convert cheaply); None for anything else."""
    if _DIGITS.fullmatch(raw) is None:
        return None
    return int(raw) if len(raw) <= _MAX_DIGITS else 10**_MAX_DIGITS


def moment_param(query: dict[str, str], name: str) -> int | None:
    """A time parameter: unix milliseconds or ISO-8601, from 1970 to the year 9999."""
    raw = query.get(name)
    if not raw:
        return None
    problem = f"{name} must be unix milliseconds or ISO-8601 from 1970 to 9999, got {shown(raw)}"
    natural = _natural(raw)
    if natural is not None:
        moment = natural
    elif len(raw) <= _MAX_ISO:
        try:
            moment = parse_timestamp(raw)
        except (ValueError, OverflowError):
            raise HttpError(400, ErrorCode.INVALID_MESSAGE, problem) from None
    else:
        raise HttpError(400, ErrorCode.INVALID_MESSAGE, problem)
    if not 0 <= moment <= _LAST_MOMENT:
        raise HttpError(400, ErrorCode.INVALID_MESSAGE, problem)
    return moment


def cursor_param(query: dict[str, str]) -> str | None:
    """The opaque ``cursor`` parameter; the engine checks it is one it made."""
    raw = query.get("cursor")
    if not raw:
        return None
    if len(raw) > _MAX_CURSOR:
        raise HttpError(
            400, ErrorCode.INVALID_MESSAGE, f"cursor {shown(raw)} is not one this server made"
        )
    return raw
