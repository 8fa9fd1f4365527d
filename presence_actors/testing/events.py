"""The events of a simulated schedule: what clients, operators and faults do, and when.

An event names users and devices by number (user 3 is ``u3``, device 1 of a
user is ``d1``), so that a schedule is plain data: generated from a seed,
drawn by hypothesis, cut down by the shrinker, printed in a trace. ``at`` is
the moment on the simulation's trio clock (seconds from the start). An event
that does not apply when its moment comes (a disconnect of a device that is
not connected) does nothing and is not counted.
"""

from __future__ import annotations

from attrs import frozen

from ..model import Status, Visibility


def user_name(user: int) -> str:
    return f"u{user}"


def device_name(device: int) -> str:
    return f"d{device}"


@frozen
class Event:
    at: float

    def describe(self) -> str:
        """One line of a trace (without the time)."""
        raise NotImplementedError


# --- clients -------------------------------------------------------------------------


@frozen
class ClientEvent(Event):
    """Something one client (a user's device) does."""

    user: int
    device: int

    @property
    def who(self) -> str:
        return f"{user_name(self.user)}/{device_name(self.device)}"


@frozen
class Connect(ClientEvent):
    """A new connection; one already open on the same device is superseded."""

    def describe(self) -> str:
        return f"{self.who} connect"


@frozen
class Drop(ClientEvent):
    """The connection is lost (abrupt disconnect: the grace period applies)."""

    def describe(self) -> str:
        return f"{self.who} drop"


@frozen
class Logout(ClientEvent):
    """A clean disconnect: ``logout``, no grace period."""

    def describe(self) -> str:
        return f"{self.who} logout"


@frozen
class Silence(ClientEvent):
    """Heartbeat loss: the client sends nothing more and never closes."""

    def describe(self) -> str:
        return f"{self.who} goes silent"


@frozen
class SetStatus(ClientEvent):
    status: Status
    message: str | None  # None: unchanged; "": cleared
    every_session: bool = False

    def describe(self) -> str:
        message = "" if self.message is None else f" {self.message!r}"
        scope = " (all sessions)" if self.every_session else ""
        return f"{self.who} set_status {self.status.value}{message}{scope}"


@frozen
class Identify(ClientEvent):
    username: str

    def describe(self) -> str:
        return f"{self.who} identify {self.username!r}"


@frozen
class Active(ClientEvent):
    """User activity: ``activity`` (or an active heartbeat when ``heartbeat``)."""

    heartbeat: bool = False

    def describe(self) -> str:
        return f"{self.who} {'heartbeat (active)' if self.heartbeat else 'activity'}"


@frozen
class Privacy(ClientEvent):
    visibility: Visibility

    def describe(self) -> str:
        return f"{self.who} set_privacy {self.visibility.value}"


@frozen
class Block(ClientEvent):
    target: int
    on: bool = True

    def describe(self) -> str:
        return f"{self.who} {'block' if self.on else 'unblock'} {user_name(self.target)}"


@frozen
class Subscribe(ClientEvent):
    targets: tuple[int, ...]
    on: bool = True

    def describe(self) -> str:
        names = ",".join(user_name(t) for t in self.targets)
        return f"{self.who} {'subscribe' if self.on else 'unsubscribe'} {names}"


@frozen
class Query(ClientEvent):
    """A read: ``presence`` (everyone), ``check`` (``target``), ``count`` or ``list``."""

    kind: str
    target: int = 0

    def describe(self) -> str:
        about = f" {user_name(self.target)}" if self.kind == "check" else ""
        return f"{self.who} query {self.kind}{about}"


# --- the operator (admin API) --------------------------------------------------------


@frozen
class Contact(Event):
    """The application's backend adds (or removes) a contact pair."""

    user: int
    other: int
    on: bool = True

    def describe(self) -> str:
        verb = "add" if self.on else "remove"
        return f"admin {verb} contact {user_name(self.user)} <-> {user_name(self.other)}"


@frozen
class AdminPrivacy(Event):
    user: int
    visibility: Visibility

    def describe(self) -> str:
        return f"admin set privacy of {user_name(self.user)} to {self.visibility.value}"


# --- faults ------------------------------------------------------------------------


@frozen
class Crash(Event):
    """The user's actor crashes at the next message it handles (any but ``activity``)."""

    user: int

    def describe(self) -> str:
        return f"fault: crash the actor of {user_name(self.user)} at its next message"


@frozen
class CommitErrors(Event):
    """Every commit fails (an I/O error) for ``duration`` seconds."""

    duration: float

    def describe(self) -> str:
        return f"fault: commits fail for {self.duration:.3f} s"


@frozen
class SlowCommits(Event):
    """Every commit takes ``delay`` seconds more, for ``duration`` seconds."""

    duration: float
    delay: float

    def describe(self) -> str:
        return f"fault: commits take {self.delay:.3f} s more for {self.duration:.3f} s"


@frozen
class Restart(Event):
    """The process stops and starts again on its database: cleanly (SIGTERM), or
    killed (``kill``: only what was committed survives)."""

    kill: bool

    def describe(self) -> str:
        return "fault: process killed and restarted" if self.kill else "process restarted"


CLIENT_EVENTS = (Connect, Drop, Logout, Silence, SetStatus, Identify, Active, Privacy, Block)
