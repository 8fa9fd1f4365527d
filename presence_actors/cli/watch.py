"""``watch``: print users' presence as it changes, until Ctrl-C.

It reads the server's ``SubscribeStatusUpdates`` stream (Connect protocol,
connectrpc's own client), whose watcher is nobody's session: watching never
puts anyone online, never creates a user, and needs no ``web.observer``. It
watches as nobody (what anyone may see), as ``--as USER`` (``none`` mode: what
that user may see) or as the user of ``--token`` (``jwt`` mode).

The client is synchronous, so each read runs in a worker thread that a
cancellation abandons: Ctrl-C (or SIGTERM) ends the command at once, whatever
the read was waiting for. A lost stream is opened again with backoff (the
server sends every watched user's state first, and only what changed is
printed); a refusal that a retry would meet again ends the command, in one line.
"""

from __future__ import annotations

import random
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import datetime
from urllib.error import URLError
from urllib.request import Request, urlopen

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError

from ..client import Backoff
from ..gateway.grpc_gen.presence.v1 import presence_pb as pb
from ..gateway.grpc_gen.presence.v1.presence_connect import PresenceServiceClientSync
from ..model import Status
from .errors import CliError, warn
from .remote import HTTP_TIMEOUT

# One StatusUpdateEvent is a few hundred bytes (a 140-character message, a
# 64-character name); a bigger one is not from a presence server.
MAX_EVENT_BYTES = 64 * 1024
_STATUS = {
    pb.UserStatus.ONLINE: Status.ONLINE,
    pb.UserStatus.BUSY: Status.BUSY,
    pb.UserStatus.AWAY: Status.AWAY,
    pb.UserStatus.OFFLINE: Status.OFFLINE,
}
# Refusals that the same request would meet again: no point retrying. (Also an
# event over MAX_EVENT_BYTES, RESOURCE_EXHAUSTED here: not a presence server.)
_FINAL = frozenset(
    {
        Code.INVALID_ARGUMENT,
        Code.UNAUTHENTICATED,
        Code.PERMISSION_DENIED,
        Code.NOT_FOUND,
        Code.UNIMPLEMENTED,
        Code.RESOURCE_EXHAUSTED,
    }
)


async def watch_until_signalled(
    base: str, ids: tuple[str, ...], viewer: str | None, token: str | None
) -> int:
    """Watch until SIGINT or SIGTERM (exit status 0) or a final refusal (CliError)."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            await Watch(base, ids, viewer, token, _print).run()
    return 0


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


def _print(line: str) -> None:
    print(line, flush=True)


class Watch:
    """The stream, opened again after a loss, and the lines printed from it."""

    def __init__(
        self,
        base: str,
        ids: tuple[str, ...],
        viewer: str | None,
        token: str | None,
        output: Callable[[str], None],
    ) -> None:
        self.base = base
        self.request = pb.SubscribeStatusUpdatesRequest(
            user_id=viewer or "", watch_user_ids=list(ids)
        )
        self.headers = {"authorization": f"Bearer {token}"} if token else {}
        self.output = output
        self.shown: dict[str, tuple[Status, str]] = {}
        self.backoff = Backoff()

    async def run(self) -> None:
        """Never returns; raises CliError when the server cannot be reached at first,
        or refuses the stream for good. Cancel it to stop."""
        await trio.to_thread.run_sync(self._probe, abandon_on_cancel=True)
        client = PresenceServiceClientSync(
            self.base, read_max_bytes=MAX_EVENT_BYTES, send_compression=None
        )
        attempt = 0  # failed attempts since the stream was last up
        connected_once = False
        while True:
            live = False
            try:
                stream = iter(client.subscribe_status_updates(self.request, headers=self.headers))
                while (event := await _next(stream)) is not None:
                    if not live and attempt:
                        warn("reconnected")
                    live, connected_once, attempt = True, True, 0
                    self._show(event)
                problem = "the server ended the stream"
            except ConnectError as exc:
                if exc.code in _FINAL or (not connected_once and exc.code != Code.UNAVAILABLE):
                    hint = ""
                    if exc.code == Code.UNAUTHENTICATED and not self.headers:
                        hint = " (the server signs users in with tokens: give --token)"
                    raise CliError(f"{self.base} refused to stream: {_brief(exc)}{hint}") from None
                if not connected_once:
                    raise CliError(
                        f"cannot reach the server at {self.base}: {_brief(exc)}"
                    ) from None
                problem = _brief(exc)
            if live:  # one line per loss; the attempts that follow are quiet
                warn(f"connection lost ({problem}); reconnecting")
            await trio.sleep(self.backoff.delay(attempt, random.random()))
            attempt += 1

    def _probe(self) -> None:
        """Reach the server once the way ``status`` does, so both fail alike."""
        try:
            with urlopen(Request(f"{self.base}/healthz"), timeout=HTTP_TIMEOUT) as response:
                response.read(1024)
        except (URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(f"cannot reach the server at {self.base}: {reason}") from None

    def _show(self, event: pb.StatusUpdateEvent) -> None:
        status = _STATUS.get(event.status, Status.OFFLINE)
        state = (status, event.status_message)
        if self.shown.get(event.user_id) == state:
            return
        self.shown[event.user_id] = state
        moment = datetime.fromtimestamp(event.timestamp / 1000)
        message = f'  "{event.status_message}"' if event.status_message else ""
        self.output(f"{moment:%H:%M:%S}  {event.user_id}  {status.value}{message}")


async def _next(stream: Iterator[pb.StatusUpdateEvent]) -> pb.StatusUpdateEvent | None:
    """The stream's next event, read in a worker thread; None at its end.

    Cancelled, the read is abandoned (its thread finishes on its own or dies
    with the process); the stream must not be read again.
    """
    event = await trio.to_thread.run_sync(next, stream, None, abandon_on_cancel=True)
    return event


def _brief(exc: ConnectError) -> str:
    """The error in a few words: the transport's own clause, not the whole chain."""
    message = exc.message or str(exc)
    _, found, cause = message.partition("client error (Connect): ")
    return f"{exc.code.name}: {cause if found else message}"
