"""The client protocol's messages as attrs classes (PROTOCOL.md section 2).

Field names are snake_case here and camelCase on the wire; the JSON codec in
:mod:`presence_actors.codec` does that mapping. Every transport (WebSocket,
gRPC, HTTP) speaks to the engine in these terms.
"""

from __future__ import annotations

import enum
from typing import ClassVar

from attrs import define, field, frozen
from attrs.validators import and_, max_len, min_len, optional

from .model import MAX_STATUS_MESSAGE, MAX_USERNAME, Status, UserView, Visibility


class ErrorCode(enum.Enum):
    INVALID_JSON = "INVALID_JSON"
    INVALID_MESSAGE = "INVALID_MESSAGE"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    INVALID_STATUS = "INVALID_STATUS"
    INVALID_USER_ID = "INVALID_USER_ID"
    USER_NOT_FOUND = "USER_NOT_FOUND"
    UNAUTHORIZED = "UNAUTHORIZED"
    FORBIDDEN = "FORBIDDEN"
    RATE_LIMITED = "RATE_LIMITED"
    TOO_LARGE = "TOO_LARGE"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    STORE_ERROR = "STORE_ERROR"
    INTERNAL = "INTERNAL"


class ProtocolError(ValueError):
    """A request the server refuses, with the code the client is told."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Scope(enum.Enum):
    SESSION = "session"
    ALL = "all"


# --- client -> server ------------------------------------------------------


@frozen(kw_only=True)
class ClientMessage:
    TYPE: ClassVar[str] = ""
    request_id: str | None = field(default=None, validator=optional(max_len(64)))
    # Optional; when present it must name the connection's own user (else FORBIDDEN).
    user_id: str | None = None


@frozen(kw_only=True)
class GetOnlineCount(ClientMessage):
    TYPE = "get_online_count"


@frozen(kw_only=True)
class CheckUserStatus(ClientMessage):
    TYPE = "check_user_status"
    target_user_id: str


@frozen(kw_only=True)
class GetAllUsers(ClientMessage):
    TYPE = "get_all_users"
    status: Status | None = None
    limit: int = 1000
    cursor: str | None = None


@frozen(kw_only=True)
class GetPresence(ClientMessage):
    TYPE = "get_presence"
    user_ids: tuple[str, ...]


@frozen(kw_only=True)
class SetStatus(ClientMessage):
    TYPE = "set_status"
    status: Status
    # None: leave the message as it is; "": clear it (the codec maps JSON null to "").
    status_message: str | None = field(
        default=None, validator=optional(max_len(MAX_STATUS_MESSAGE))
    )
    scope: Scope = Scope.SESSION


@frozen(kw_only=True)
class Identify(ClientMessage):
    TYPE = "identify"
    username: str = field(validator=and_(min_len(1), max_len(MAX_USERNAME)))


@frozen(kw_only=True)
class Heartbeat(ClientMessage):
    TYPE = "heartbeat"
    active: bool = False


@frozen(kw_only=True)
class Activity(ClientMessage):
    TYPE = "activity"


@frozen(kw_only=True)
class Subscribe(ClientMessage):
    TYPE = "subscribe"
    user_ids: tuple[str, ...]


@frozen(kw_only=True)
class Unsubscribe(ClientMessage):
    TYPE = "unsubscribe"
    user_ids: tuple[str, ...]


@frozen(kw_only=True)
class SetPrivacy(ClientMessage):
    TYPE = "set_privacy"
    visibility: Visibility


@frozen(kw_only=True)
class Block(ClientMessage):
    TYPE = "block"
    target_user_id: str


@frozen(kw_only=True)
class Unblock(ClientMessage):
    TYPE = "unblock"
    target_user_id: str


@frozen(kw_only=True)
class Logout(ClientMessage):
    TYPE = "logout"


CLIENT_MESSAGES: tuple[type[ClientMessage], ...] = (
    GetOnlineCount,
    CheckUserStatus,
    GetAllUsers,
    GetPresence,
    SetStatus,
    Identify,
    Heartbeat,
    Activity,
    Subscribe,
    Unsubscribe,
    SetPrivacy,
    Block,
    Unblock,
    Logout,
)


# --- server -> client ------------------------------------------------------


@frozen(kw_only=True)
class ServerMessage:
    TYPE: ClassVar[str] = ""
    timestamp: int  # unix ms, sent as ISO-8601
    request_id: str | None = None


@frozen(kw_only=True)
class Welcome(ServerMessage):
    TYPE = "welcome"
    user_id: str
    session_id: str
    device_id: str
    message: str
    heartbeat_interval: float
    heartbeat_timeout: float


@frozen(kw_only=True)
class PresenceState(ServerMessage):
    TYPE = "presence_state"
    users: tuple[UserView, ...]


@frozen(kw_only=True)
class UserStatusChange(ServerMessage):
    TYPE = "user_status_change"
    view: UserView


@frozen(kw_only=True)
class Error(ServerMessage):
    TYPE = "error"
    code: ErrorCode
    message: str


@frozen(kw_only=True)
class OnlineCount(ServerMessage):
    TYPE = "online_count"
    count: int


@frozen(kw_only=True)
class UserStatus(ServerMessage):
    TYPE = "user_status"
    view: UserView


@frozen(kw_only=True)
class AllUsers(ServerMessage):
    TYPE = "all_users"
    users: tuple[UserView, ...]
    next_cursor: str | None


@frozen(kw_only=True)
class Presence(ServerMessage):
    TYPE = "presence"
    users: tuple[UserView, ...]


@frozen(kw_only=True)
class StatusUpdated(ServerMessage):
    TYPE = "status_updated"
    status: Status
    effective_status: Status
    status_message: str | None


@frozen(kw_only=True)
class Identified(ServerMessage):
    TYPE = "identified"
    user_id: str
    username: str


@frozen(kw_only=True)
class HeartbeatAck(ServerMessage):
    TYPE = "heartbeat_ack"
    next_heartbeat_in_seconds: float


@frozen(kw_only=True)
class Unsubscribed(ServerMessage):
    TYPE = "unsubscribed"
    user_ids: tuple[str, ...]


@frozen(kw_only=True)
class PrivacyUpdated(ServerMessage):
    TYPE = "privacy_updated"
    visibility: Visibility


@frozen(kw_only=True)
class Blocked(ServerMessage):
    TYPE = "blocked"
    target_user_id: str


@frozen(kw_only=True)
class Unblocked(ServerMessage):
    TYPE = "unblocked"
    target_user_id: str


@define(eq=False)
class Push:
    """A ``user_status_change`` encoded once and shared by every watcher's outbox.

    ``frame`` is the JSON text and ``payload`` its UTF-8 bytes; transports that
    are not JSON use ``view``. ``wire`` is a transport's own encoding of it,
    made by the first session that sends it and reused by every other (the
    engine runs in one thread, so this cache needs no lock).
    """

    view: UserView
    timestamp: int
    payload: bytes
    frame: str
    wire: bytes | None = None


@define(eq=False)
class PushBatch:
    """The pushes one fan-out tick has for a watcher, in order: one write, not one each.

    Watchers that are owed the same pushes share one batch, so ``wire`` (a
    transport's encoding of all of them together, e.g. the concatenated
    WebSocket frames) is built by the first session that sends it and reused
    by every other, like :attr:`Push.wire`. ``size`` is the JSON bytes of the
    pushes, what byte-bounded outboxes count.
    """

    pushes: tuple[Push, ...]
    size: int
    wire: bytes | None = None

    @classmethod
    def of(cls, pushes: tuple[Push, ...]) -> PushBatch:
        return cls(pushes, sum(len(push.payload) for push in pushes))


SERVER_MESSAGES: tuple[type[ServerMessage], ...] = (
    Welcome,
    PresenceState,
    UserStatusChange,
    Error,
    OnlineCount,
    UserStatus,
    AllUsers,
    Presence,
    StatusUpdated,
    Identified,
    HeartbeatAck,
    Unsubscribed,
    PrivacyUpdated,
    Blocked,
    Unblocked,
)
