"""JSON codec for the protocol messages: cattrs for the shapes, orjson for the bytes.

Decoding is strict — a string field refuses a number, an integer field refuses
``true`` — and every refusal is a :class:`~presence_actors.protocol.ProtocolError`
carrying the code the client is told. Unknown extra fields are ignored.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from attrs import fields
from cattrs import ClassValidationError, Converter, IterableValidationError, transform_error
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from . import protocol as p
from .model import (
    DeviceType,
    DeviceView,
    Status,
    UserView,
    Visibility,
    format_timestamp,
    parse_timestamp,
    user_id_problem,
)

T = TypeVar("T")

_converter = Converter(forbid_extra_keys=False)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


# --- strict primitives ---------------------------------------------------------


def _strict(kind: type, label: str) -> Callable[[Any, type], Any]:
    def structure(value: Any, _: type) -> Any:
        # bool is an int subclass; a JSON true is never an integer here.
        if type(value) is not kind and not (kind is float and type(value) is int):
            raise ValueError(f"expected {label}, got {_json_kind(value)}")
        return value

    return structure


def _json_kind(value: object) -> str:
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


_converter.register_structure_hook(str, _strict(str, "a string"))
_converter.register_structure_hook(int, _strict(int, "an integer"))
_converter.register_structure_hook(float, _strict(float, "a number"))
_converter.register_structure_hook(bool, _strict(bool, "a boolean"))


def _check_user_id(value: Any, name: str) -> str:
    """``value`` if it is a user id; else INVALID_USER_ID saying what is wrong with it."""
    if value is not None and not isinstance(value, str):
        raise p.ProtocolError(
            p.ErrorCode.INVALID_USER_ID, f"{name} must be a string, got {_json_kind(value)}"
        )
    problem = user_id_problem(value, name)
    if problem is not None:
        raise p.ProtocolError(p.ErrorCode.INVALID_USER_ID, problem)
    assert isinstance(value, str)
    return value


def _ids_hook(name: str) -> Callable[[Any, type], tuple[str, ...]]:
    def structure(value: Any, _: type) -> tuple[str, ...]:
        if type(value) is not list:
            raise ValueError(f"expected an array of user ids, got {_json_kind(value)}")
        for index, item in enumerate(value):
            _check_user_id(item, f"{name}[{index}]")
        return tuple(value)

    return structure


_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _ids_hook("user ids"))


def _enum_hook(kind: type[Any], code: p.ErrorCode, what: str) -> Callable[[Any, type], Any]:
    allowed = ", ".join(member.value for member in kind)

    def structure(value: Any, _: type) -> Any:
        try:
            return kind(value)
        except (ValueError, TypeError):
            raise p.ProtocolError(code, f"{what} must be one of {allowed}, got {value!r}") from None

    return structure


_converter.register_structure_hook(Status, _enum_hook(Status, p.ErrorCode.INVALID_STATUS, "status"))
_converter.register_structure_hook(
    Visibility, _enum_hook(Visibility, p.ErrorCode.INVALID_MESSAGE, "visibility")
)
_converter.register_structure_hook(
    p.Scope, _enum_hook(p.Scope, p.ErrorCode.INVALID_MESSAGE, "scope")
)
_converter.register_structure_hook(
    DeviceType, _enum_hook(DeviceType, p.ErrorCode.INVALID_MESSAGE, "deviceType")
)


def _target_user_id(value: Any, _: type) -> str:
    return _check_user_id(value, "targetUserId")


for _cls in p.CLIENT_MESSAGES:
    _overrides: dict[str, Any] = {a.name: override(rename=_camel(a.name)) for a in fields(_cls)}
    if "target_user_id" in _overrides:
        _overrides["target_user_id"] = override(rename="targetUserId", struct_hook=_target_user_id)
    if "user_ids" in _overrides:
        _overrides["user_ids"] = override(rename="userIds", struct_hook=_ids_hook("userIds"))
    _converter.register_structure_hook(_cls, make_dict_structure_fn(_cls, _converter, **_overrides))

_CLIENT_TYPES: dict[str, type[p.ClientMessage]] = {cls.TYPE: cls for cls in p.CLIENT_MESSAGES}


def _first_protocol_error(error: BaseException) -> p.ProtocolError | None:
    if isinstance(error, p.ProtocolError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_protocol_error(inner)
            if found is not None:
                return found
    return None


def decode_client_message(data: str | bytes) -> p.ClientMessage:
    """Parse one client frame; raises ProtocolError with the documented code."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise p.ProtocolError(p.ErrorCode.INVALID_JSON, f"invalid JSON: {exc}") from None
    return structure_client_message(raw)


def structure_client_message(raw: object) -> p.ClientMessage:
    """Structure an already-parsed JSON value into a client message."""
    if not isinstance(raw, dict):
        raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, "a message must be a JSON object")
    kind = raw.get("type")
    if not isinstance(kind, str):
        raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, "a message needs a string 'type'")
    cls = _CLIENT_TYPES.get(kind)
    if cls is None:
        raise p.ProtocolError(p.ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}")
    if cls is p.Heartbeat:
        heartbeat = _plain_heartbeat(raw)
        if heartbeat is not None:
            return heartbeat
    if cls is p.SetStatus and "statusMessage" in raw and raw["statusMessage"] is None:
        raw = {**raw, "statusMessage": ""}
    return structure(raw, cls, kind)


# The text browsers (JSON.stringify) and the bench send as a heartbeat: a session
# that receives exactly this takes BARE_HEARTBEAT without parsing it.
BARE_HEARTBEAT_JSON = '{"type":"heartbeat"}'
# Frozen, so one instance serves every session.
BARE_HEARTBEAT = p.Heartbeat()


def _plain_heartbeat(raw: dict[str, Any]) -> p.Heartbeat | None:
    """A heartbeat with nothing but its ``type`` and maybe a string ``requestId`` of
    at most 64 characters (what every client sends), structured without the
    converter; None for any other shape, which the converter then judges. A test
    holds the result equal to the converter's."""
    if len(raw) == 1:
        return BARE_HEARTBEAT
    request_id = raw.get("requestId")
    if len(raw) == 2 and type(request_id) is str and len(request_id) <= 64:
        return p.Heartbeat(request_id=request_id)
    return None


def structure(raw: object, cls: type[T], what: str) -> T:
    """Structure a parsed JSON object into ``cls`` strictly; ProtocolError on refusal.

    ``what`` names the object in error messages (``set_status.statusMessage``).
    """
    if not isinstance(raw, dict):
        raise p.ProtocolError(p.ErrorCode.INVALID_MESSAGE, f"{what} must be a JSON object")
    try:
        return _converter.structure(raw, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        found = _first_protocol_error(exc)
        if found is not None:
            code, message = found.code, found.message
        else:
            detail = "; ".join(transform_error(exc, path=what, format_exception=_describe))
            code, message = p.ErrorCode.INVALID_MESSAGE, _wire_names(detail)
        _forget_tracebacks(exc)
    except ValueError as exc:  # attrs validators (lengths) raise outside the group
        code, message = p.ErrorCode.INVALID_MESSAGE, str(exc)
    # A fresh error, raised outside the handler and held by no local: it carries
    # no context, so the refused group (its errors, their tracebacks, the frames
    # holding the list of them) is freed by reference counting, not left to the
    # collector.
    raise p.ProtocolError(code, message)


def _forget_tracebacks(error: BaseException | None) -> None:
    while error is not None:
        error.__traceback__ = None
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                _forget_tracebacks(inner)
        error = error.__cause__ or error.__context__


def _describe(error: BaseException, _: type | None) -> str:
    if isinstance(error, KeyError):
        return "required field missing"
    return str(error) or type(error).__name__


def _wire_names(detail: str) -> str:
    for cls in p.CLIENT_MESSAGES:
        for attribute in fields(cls):
            detail = detail.replace(f".{attribute.name}", f".{_camel(attribute.name)}")
    return detail


def request_id_of(raw: object) -> str | None:
    """The requestId of a frame that failed to decode, if it had a usable one."""
    if isinstance(raw, dict):
        value = raw.get("requestId")
        if isinstance(value, str) and len(value) <= 64:
            return value
    return None


# --- encoding ----------------------------------------------------------------


def view_to_wire(view: UserView) -> dict[str, Any]:
    return {
        "userId": view.user_id,
        "username": view.username,
        "status": view.status.value,
        "online": view.status is not Status.OFFLINE,
        "statusMessage": view.status_message,
        "lastSeen": None if view.last_seen is None else format_timestamp(view.last_seen),
        "devices": [
            {"deviceId": d.device_id, "deviceType": d.device_type.value, "status": d.status.value}
            for d in view.devices
        ],
    }


def _status_fields(view: UserView) -> dict[str, Any]:
    return {
        "userId": view.user_id,
        "online": view.status is not Status.OFFLINE,
        "status": view.status.value,
        "statusMessage": view.status_message,
        "lastSeen": None if view.last_seen is None else format_timestamp(view.last_seen),
        "username": view.username,
    }


_encoder = Converter()
_encoder.register_unstructure_hook(UserView, view_to_wire)


def _register_encoder(cls: type[p.ServerMessage]) -> None:
    overrides: dict[str, Any] = {a.name: override(rename=_camel(a.name)) for a in fields(cls)}
    overrides["request_id"] = override(rename="requestId", omit_if_default=True)
    overrides["timestamp"] = override(unstruct_hook=format_timestamp)
    if "view" in overrides:
        overrides["view"] = override(omit=True)
    base = make_dict_unstructure_fn(cls, _encoder, **overrides)
    tag = cls.TYPE

    def unstructure(message: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": tag}
        if hasattr(message, "view"):
            out.update(_status_fields(message.view))
        out.update(base(message))
        return out

    _encoder.register_unstructure_hook(cls, unstructure)


for _server_cls in p.SERVER_MESSAGES:
    _register_encoder(_server_cls)


def to_wire(message: p.ServerMessage) -> dict[str, Any]:
    return _encoder.unstructure(message, type(message))  # type: ignore[no-any-return]


def encode(message: p.ServerMessage) -> str:
    """The JSON text of a server message."""
    return encode_bytes(message).decode()


def encode_bytes(message: p.ServerMessage) -> bytes:
    """The JSON of a server message, UTF-8.

    Lists of users (``presence``, ``all_users``, ``presence_state``) are spliced
    from each view's cached encoding: answering a bulk query is then mostly
    joining bytes; one made ahead by :func:`prepare_bulk` is taken as it is.
    A test holds the result equal to the generic encoding.
    """
    if type(message) is p.HeartbeatAck:
        return _heartbeat_ack(message)
    if type(message) is p.StatusUpdated:
        return _status_updated(message)
    users = getattr(message, "users", None)
    if users is None:
        return _compact(orjson.dumps(to_wire(message)))
    prepared = _prepared.take(message)
    if prepared is not None:
        return prepared
    return _splice(message, [view_fragment(view) for view in users])


def _status_updated(reply: p.StatusUpdated) -> bytes:
    """The reply to every set_status, built without the generic converter; a test
    holds it equal."""
    out: dict[str, Any] = {
        "type": "status_updated",
        "timestamp": format_timestamp(reply.timestamp),
        "status": reply.status.value,
        "effectiveStatus": reply.effective_status.value,
        "statusMessage": reply.status_message,
    }
    if reply.request_id is not None:
        out["requestId"] = reply.request_id
    return _compact(orjson.dumps(out))


def _heartbeat_ack(ack: p.HeartbeatAck) -> bytes:
    """The most frequent message there is (one per connection per heartbeat
    interval), joined from its pieces without the generic converter or a dict;
    a test holds it equal. The timestamp is ASCII digits and punctuation."""
    data = (
        b'{"type":"heartbeat_ack","timestamp":"'
        + format_timestamp(ack.timestamp).encode()
        + b'","nextHeartbeatInSeconds":'
        + orjson.dumps(ack.next_heartbeat_in_seconds)
    )
    if ack.request_id is not None:
        data += b',"requestId":' + orjson.dumps(ack.request_id)
    return data + b"}"


def prepare_bulk(message: p.ServerMessage, pieces: list[bytes]) -> None:
    """Encode a bulk answer now from its views' encodings (``pieces``, in order: each
    one view's JSON or several joined by commas), so that the transport sending it
    later only takes the bytes.

    The engine walks a bulk answer in short turns, encoding each view on the
    way; splicing ten thousand cached views again in one go would cost the
    event loop several milliseconds. What transports never take (they use the
    views) is kept up to a bound in bytes, the oldest dropped first.
    """
    _prepared.put(message, _splice(message, pieces))


def _splice(message: p.ServerMessage, pieces: list[bytes]) -> bytes:
    """The message's JSON around ``pieces`` (each one or more comma-separated views),
    in one join: a ten-thousand-user answer is copied once."""
    head: dict[str, Any] = {"type": message.TYPE, "timestamp": format_timestamp(message.timestamp)}
    if isinstance(message, p.AllUsers):
        head["nextCursor"] = message.next_cursor
    if message.request_id is not None:
        head["requestId"] = message.request_id
    parts = [orjson.dumps(head)[:-1], b',"users":[']
    for piece in pieces:
        parts += (piece, b",")
    if pieces:
        parts.pop()
    parts.append(b"]}")
    return b"".join(parts)


class _Prepared:
    """Bulk answers encoded ahead of their transport, by message identity, bounded in bytes.

    An entry lives only as long as its message: the answers of a connection
    closed before taking them (a slow reader's cleared outbox) are freed with
    it, not kept until the byte bound pushes them out.
    """

    def __init__(self, most_bytes: int) -> None:
        self._most = most_bytes
        self._entries: dict[int, tuple[weakref.ref[p.ServerMessage], bytes]] = {}
        self._bytes = 0

    def put(self, message: p.ServerMessage, data: bytes) -> None:
        key = id(message)
        self._drop(key)
        # The callback holds the key, not the message; it drops only its own entry,
        # not one a later message with the same id() made.
        self._entries[key] = (weakref.ref(message, lambda ref: self._forget(key, ref)), data)
        self._bytes += len(data)
        while self._bytes > self._most and len(self._entries) > 1:
            self._drop(next(iter(self._entries)))

    def take(self, message: p.ServerMessage) -> bytes | None:
        entry = self._entries.get(id(message))
        if entry is None or entry[0]() is not message:
            return None
        self._drop(id(message))
        return entry[1]

    @property
    def held_bytes(self) -> int:
        return self._bytes

    def _forget(self, key: int, ref: weakref.ref[p.ServerMessage]) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] is ref:
            self._drop(key)

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])


# A bulk answer is encoded at most a few times over; 32 MiB holds ten of the largest.
_prepared = _Prepared(32 << 20)


def _compact(data: bytes) -> bytes:
    """``data`` in an allocation of its own size.

    orjson hands back its output buffer, at least 4 KiB even for a 60-byte
    object (measured: tracemalloc, orjson 3.13). Bytes that outlive the call
    (a cached view, a push waiting in outboxes, a reply in a slow reader's
    queue) are copied out, so that memory is what the byte budgets count.
    """
    return memoryview(data).tobytes()


# The directory's views live until they change, so their encodings are kept,
# one per user (the entry keeps its view alive, so a later view of the user
# replaces it), up to a bound.
_FRAGMENT_LIMIT = 100_000
_fragments: dict[str, tuple[UserView, bytes]] = {}


def view_fragment(view: UserView) -> bytes:
    """The JSON of one UserView, encoded once per view object."""
    entry = _fragments.get(view.user_id)
    if entry is not None and entry[0] is view:
        return entry[1]
    data = _compact(orjson.dumps(view_to_wire(view)))
    if entry is None and len(_fragments) >= _FRAGMENT_LIMIT:
        _fragments.clear()
    _fragments[view.user_id] = (view, data)
    return data


def make_push(view: UserView, timestamp: int) -> p.Push:
    """Encode a change once; every watcher's outbox gets the same object.

    The hot path of fan-out, so it builds the JSON object directly; a test
    holds it equal to ``encode(UserStatusChange(...))``.
    """
    wire = _status_fields(view)
    wire["type"] = p.UserStatusChange.TYPE
    wire["timestamp"] = format_timestamp(timestamp)
    payload = _compact(orjson.dumps(wire))
    return p.Push(view, timestamp, payload, payload.decode())


# --- the client's side: decoding server messages, encoding client messages ----------
#
# The inverse of the two directions above, for clients written in Python (the
# ``presence_actors.client`` module, the command line, tests). The server is
# trusted to speak the protocol, so these converters use cattrs' ordinary hooks
# rather than the strict ones the server applies to clients.


class ServerMessageError(ValueError):
    """A server frame that is not JSON, has an unknown ``type`` or a malformed field."""


def _timestamp(value: Any, _: type) -> int:
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 timestamp, got {_json_kind(value)}")
    return parse_timestamp(value)


def _optional_timestamp(value: Any, kind: type) -> int | None:
    return None if value is None else _timestamp(value, kind)


def _camel_overrides(cls: type) -> dict[str, Any]:
    return {a.name: override(rename=_camel(a.name)) for a in fields(cls)}


_decoder = Converter(forbid_extra_keys=False)
_decoder.register_structure_hook(
    DeviceView, make_dict_structure_fn(DeviceView, _decoder, **_camel_overrides(DeviceView))
)
# ``online`` is derived from ``status``; a missing ``devices`` (user_status,
# user_status_change) is the empty tuple, UserView's default.
_decoder.register_structure_hook(
    UserView,
    make_dict_structure_fn(
        UserView,
        _decoder,
        **{
            **_camel_overrides(UserView),
            "last_seen": override(rename="lastSeen", struct_hook=_optional_timestamp),
        },
    ),
)


def _register_decoder(cls: type[p.ServerMessage]) -> None:
    overrides = _camel_overrides(cls)
    overrides["timestamp"] = override(struct_hook=_timestamp)
    base = make_dict_structure_fn(cls, _decoder, **overrides)
    if "view" not in overrides:
        _decoder.register_structure_hook(cls, base)
        return

    # The view's fields are the message's own top-level fields (see _status_fields).
    def structure(raw: Any, kind: type) -> Any:
        return base({**raw, "view": raw}, kind)

    _decoder.register_structure_hook(cls, structure)


for _server_cls in p.SERVER_MESSAGES:
    _register_decoder(_server_cls)

_SERVER_TYPES: dict[str, type[p.ServerMessage]] = {cls.TYPE: cls for cls in p.SERVER_MESSAGES}


def decode_server_message(data: str | bytes) -> p.ServerMessage:
    """Parse one server frame into its message class; the inverse of :func:`encode`.

    Raises ServerMessageError for a frame that is not a JSON object, whose
    ``type`` is unknown (a newer server), or whose fields do not fit.
    """
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ServerMessageError(f"invalid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ServerMessageError("a server message must be a JSON object")
    kind = raw.get("type")
    cls = _SERVER_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ServerMessageError(f"unknown server message type {kind!r}")
    try:
        return _decoder.structure(raw, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        detail = "; ".join(transform_error(exc, path=cls.TYPE, format_exception=_describe))
        raise ServerMessageError(detail) from None


def view_from_wire(raw: object) -> UserView:
    """The inverse of :func:`view_to_wire` (REST bodies carry UserViews too)."""
    try:
        return _decoder.structure(raw, UserView)
    except (ClassValidationError, IterableValidationError) as exc:
        detail = "; ".join(transform_error(exc, path="user", format_exception=_describe))
        raise ServerMessageError(detail) from None


_client_encoder = Converter()


def _register_client_encoder(cls: type[p.ClientMessage]) -> None:
    base = make_dict_unstructure_fn(
        cls, _client_encoder, _cattrs_omit_if_default=True, **_camel_overrides(cls)
    )
    tag = cls.TYPE

    def unstructure(message: Any) -> dict[str, Any]:
        return {"type": tag, **base(message)}

    _client_encoder.register_unstructure_hook(cls, unstructure)


for _client_cls in p.CLIENT_MESSAGES:
    _register_client_encoder(_client_cls)


def encode_client_message(message: p.ClientMessage) -> str:
    """The JSON text of a client message; fields left at their default are omitted.

    ``decode_client_message(encode_client_message(m)) == m``.
    """
    wire = _client_encoder.unstructure(message, type(message))
    return orjson.dumps(wire).decode()
