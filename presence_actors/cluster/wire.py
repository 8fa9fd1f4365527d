"""What nodes write to Redis and read back: a node's report, the merged user.

A node's *report* of a user is its own aggregate (the view its user actor
computes from the sessions it holds): the merge script (merge.lua) combines
every node's report into the user as the cluster shows it, the *merged* view,
which comes back as JSON to the node that reported and, through pub/sub, to
the nodes that watch the user.
"""

from __future__ import annotations

from typing import Any

import orjson
from attrs import frozen

from ..model import DeviceType, DeviceView, Status, UserView


@frozen
class Report:
    """One node's aggregate of one user, as its user actor last published it.

    ``status`` is what the node's sessions show (or what it holds through the
    grace period, with no ``devices``); an offline report without devices
    withdraws the node's entry. ``profile`` is set when the user changed its
    username or status message on this node. ``cause`` is the session whose
    request made the change (it got a reply; the push skips it), kept on this
    node only.
    """

    user_id: str
    status: Status
    devices: tuple[DeviceView, ...]
    active: int | None  # latest activity of a visible session (unix ms)
    alive: int | None  # latest message or heartbeat of a visible session
    profile: tuple[str | None, str | None] | None = None
    cause: object = None
    # What others are shown of the profile if the user shows offline: the username
    # and status message it last showed while visible, as this node knows it.
    face: tuple[str | None, str | None] | None = None

    @property
    def withdrawn(self) -> bool:
        return self.status is Status.OFFLINE and not self.devices

    def entry(self, epoch: int) -> bytes:
        """The JSON of the node's entry (merge.lua reads ``e s d a v``)."""
        if self.withdrawn:
            return b""
        return orjson.dumps(
            {
                "e": epoch,
                "s": self.status.value,
                "d": [[d.device_id, d.device_type.value, d.status.value] for d in self.devices],
                "a": self.active,
                "v": self.alive,
            }
        )


@frozen
class MergedView:
    """The user as the cluster shows it, at ``version`` (which only grows)."""

    user_id: str
    view: UserView  # as the user itself sees it
    public: UserView  # as everyone else does (an invisible user looks offline)
    version: int
    push_own: bool = False
    push_public: bool = False
    status_changed: bool = False
    origin: str = ""


def decode_merged(data: bytes | str, user_id: str | None = None) -> MergedView:
    """Parse merge.lua's JSON (a script reply, a pub/sub message or a stored view)."""
    raw: dict[str, Any] = orjson.loads(data)
    user = raw.get("id") or user_id
    assert user is not None, "a merged view without its user id"
    status = Status(raw["s"])
    devices = tuple(
        DeviceView(device_id, DeviceType(kind), Status(shown))
        for device_id, kind, shown in raw.get("d") or ()
    )
    view = UserView(user, status, raw.get("u"), raw.get("m"), raw.get("ls"), devices)
    public = view
    if status is Status.OFFLINE and (
        devices or (raw.get("su"), raw.get("sm")) != (raw.get("u"), raw.get("m"))
    ):
        public = UserView(user, Status.OFFLINE, raw.get("su"), raw.get("sm"), raw.get("ls"), ())
    return MergedView(
        user_id=user,
        view=view,
        public=public,
        version=int(raw.get("ver", 0)),
        push_own=bool(raw.get("po")),
        push_public=bool(raw.get("pp")),
        status_changed=bool(raw.get("sc")),
        origin=str(raw.get("o", "")),
    )


def order_score(view: UserView) -> float:
    """The ``get_all_users`` order as a sorted-set score (ties: user id, as Redis does).

    Online first, then lastSeen most recent first; exact in a double while
    lastSeen stays below 2**43 ms (the year 2248).
    """
    rank = 1 if view.status is Status.OFFLINE else 0
    last_seen = -1 if view.last_seen is None else view.last_seen
    return float(rank * (1 << 44) + ((1 << 43) - last_seen))
