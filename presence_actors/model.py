"""The presence vocabulary shared by the engine, the gateways and the store.

Everything here is plain, immutable data: statuses and their priority, what a
watcher is shown about a user (:class:`UserView`), and identifier rules.
"""

from __future__ import annotations

import enum
import functools
import re
from datetime import UTC, datetime

from attrs import frozen


class Status(enum.Enum):
    ONLINE = "online"
    BUSY = "busy"
    AWAY = "away"
    OFFLINE = "offline"

    @property
    def priority(self) -> int:
        return _PRIORITY[self]


# online > busy > away > offline: the user shows its most available device.
_PRIORITY = {Status.ONLINE: 3, Status.BUSY: 2, Status.AWAY: 1, Status.OFFLINE: 0}


def strongest(statuses: list[Status]) -> Status:
    """The highest-priority status of ``statuses``; ``offline`` when empty."""
    # Identity tests, not _PRIORITY lookups: an Enum's __hash__ is Python code,
    # and this runs for every change of every user.
    best = Status.OFFLINE
    for status in statuses:
        if status is Status.ONLINE:
            return status
        if status is Status.BUSY or (status is Status.AWAY and best is Status.OFFLINE):
            best = status
    return best


class DeviceType(enum.Enum):
    WEB = "web"
    MOBILE = "mobile"
    DESKTOP = "desktop"
    OTHER = "other"


class Visibility(enum.Enum):
    EVERYONE = "everyone"
    CONTACTS = "contacts"
    NOBODY = "nobody"


MAX_USER_ID = 128
_USER_ID = re.compile(rf"[A-Za-z0-9_.:@-]{{1,{MAX_USER_ID}}}")
_USER_ID_CHARACTER = re.compile(r"[A-Za-z0-9_.:@-]")
USER_ID_RULE = f"1-{MAX_USER_ID} characters from A-Z a-z 0-9 _ . : @ -"
MAX_USERNAME = 64
MAX_STATUS_MESSAGE = 140
# How much of a refused value an error message repeats: enough to recognise it,
# never a whole hostile input reflected back.
_SHOWN = 40


def is_valid_user_id(value: object) -> bool:
    return isinstance(value, str) and _USER_ID.fullmatch(value) is not None


def user_id_problem(value: object, name: str = "userId") -> str | None:
    """What is wrong with ``value`` as a user id, in one sentence naming the field
    ``name``; None when it is a valid user id.

    Missing (None), empty, too long, not a string, or the first character that
    is not allowed (with its position and code point), so a client learns what
    to fix instead of being told the id is required when it sent one.
    """
    if is_valid_user_id(value):
        return None
    if value is None:
        return f"{name} is required: {USER_ID_RULE}"
    if not isinstance(value, str):
        return f"{name} must be a string of {USER_ID_RULE}, got {type(value).__name__}"
    if not value:
        return f"{name} is empty: expected {USER_ID_RULE}"
    if len(value) > MAX_USER_ID:
        return f"{name} is {len(value)} characters long: at most {MAX_USER_ID}"
    position, bad = next(
        (i, c) for i, c in enumerate(value, 1) if _USER_ID_CHARACTER.fullmatch(c) is None
    )
    return (
        f"{name} {shown(value)} has {bad!r} (U+{ord(bad):04X}) at position {position}:"
        " only A-Z a-z 0-9 _ . : @ - are allowed"
    )


def shown(value: str) -> str:
    """``value`` quoted for an error message, cut after a few dozen characters."""
    if len(value) <= _SHOWN:
        return repr(value)
    return repr(value[:_SHOWN]) + f"... ({len(value)} characters)"


@frozen
class DeviceView:
    device_id: str
    device_type: DeviceType
    status: Status


@frozen
class UserView:
    """What one watcher is shown about one user at one moment.

    ``last_seen`` is unix milliseconds, ``None`` for a user never seen.
    """

    user_id: str
    status: Status = Status.OFFLINE
    username: str | None = None
    status_message: str | None = None
    last_seen: int | None = None
    devices: tuple[DeviceView, ...] = ()

    @property
    def online(self) -> bool:
        return self.status is not Status.OFFLINE

    def pushed_part(self) -> tuple[Status, str | None, str | None]:
        """The fields whose change is pushed to watchers (lastSeen alone is not)."""
        return (self.status, self.status_message, self.username)


# How the audit log's own reasons for an invisible user's transitions are shown to
# others: going invisible looks like a logout, coming back like a connect, so the
# history of an "appear offline" user reads like that of one who really left.
_PUBLIC_REASONS = {"invisible": "logout", "visible": "connect"}


def public_reason(reason: str) -> str:
    """The reason of a presence event as anyone but the user itself is told it."""
    return _PUBLIC_REASONS.get(reason, reason)


# One shared (frozen) view per id: bulk answers about the same unknown or
# hidden users then reuse its cached encoding instead of building it anew.
@functools.lru_cache(maxsize=65_536)
def unknown_user(user_id: str) -> UserView:
    """How a user that does not exist, or that the watcher may not see, looks."""
    return UserView(user_id=user_id)


# Many messages share a millisecond, and offline users' lastSeen values repeat.
@functools.lru_cache(maxsize=4096)
def format_timestamp(unix_ms: int) -> str:
    """ISO-8601 UTC with milliseconds and ``Z``: ``2026-11-23T10:30:00.000Z``."""
    return f"{_format_second(unix_ms // 1000)}.{unix_ms % 1000:03d}Z"


# Live timestamps are new milliseconds but share their second: the date
# formatting, most of the cost, is done once per second.
@functools.lru_cache(maxsize=1024)
def _format_second(unix_seconds: int) -> str:
    return f"{datetime.fromtimestamp(unix_seconds, UTC):%Y-%m-%dT%H:%M:%S}"


def parse_timestamp(text: str) -> int:
    """Inverse of :func:`format_timestamp`; accepts any ISO-8601 with an offset or ``Z``."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)
