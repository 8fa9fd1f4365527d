"""A Python client for the presence server's WebSocket protocol, on trio-websocket.

``open_presence_client`` connects, waits for ``welcome`` and yields a
:class:`PresenceClient` that answers requests by ``requestId``, sends heartbeats
at the server's ``heartbeatInterval``, delivers pushes and connection changes
through :meth:`PresenceClient.events`, and reconnects with backoff after a lost
connection, keeping its ``deviceId`` so that the server's grace period hides
the gap from watchers.

Backpressure: nothing this client buffers grows without bound. Replies go to
the task awaiting them. Events go into a buffer of ``event_buffer`` items; when
the consumer falls that far behind, newer events are dropped (the reader never
waits for the consumer, so replies and heartbeats keep flowing) and the next
event it receives is an :class:`EventsDropped` saying how many were lost: its
view of the users is stale, and ``get_presence`` refreshes it. Sends wait for
the socket, so a slow network slows the caller, not memory.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import overload
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
import trio
from attrs import define, field, frozen
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from . import codec
from .model import DeviceType
from .protocol import (
    Activity,
    ClientMessage,
    Error,
    ErrorCode,
    Heartbeat,
    HeartbeatAck,
    Logout,
    PresenceState,
    ServerMessage,
    UserStatusChange,
    Welcome,
)

log = logging.getLogger("presence_actors.client")

# A handshake plus the welcome: milliseconds on a LAN, well under a second on a
# slow mobile link; ten seconds means the server is not answering.
DEFAULT_CONNECT_TIMEOUT = 10.0
# The server answers from memory; a reply this late means it is overloaded or gone.
DEFAULT_REQUEST_TIMEOUT = 10.0
# Like the server's outbound queue: a burst of pushes from a busy room fits.
DEFAULT_EVENT_BUFFER = 1000
# Saying goodbye must not hold up a shutdown: the server may already be gone.
CLOSE_TIMEOUT = 2.0

# Close codes after which reconnecting is wrong: 1000 ends a session on purpose
# (logout, our own close), 4000 means another connection took over our deviceId.
_FINAL_CLOSE_CODES = frozenset({1000, 4000})
# Refusals that a retry would meet again; others (LIMIT_EXCEEDED, ...) may pass later.
_PERMANENT_REFUSALS = frozenset(
    {
        ErrorCode.INVALID_USER_ID,
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.INVALID_MESSAGE,
    }
)
_CLOSE_POLICY = 1008


# --- errors ------------------------------------------------------------------------


class PresenceClientError(Exception):
    """Base class of this client's errors."""


class ConnectError(PresenceClientError):
    """The server could not be reached or did not complete the WebSocket handshake."""


class ConnectTimeout(ConnectError):
    """No handshake and ``welcome`` within ``connect_timeout``."""


class ConnectionRefused(PresenceClientError):
    """The server answered the connection with an ``error`` and closed it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(PresenceClientError):
    """The connection ended (or was not up) while a request needed it.

    ``code`` is the WebSocket close code (1006 for a dropped socket), None when
    there was no connection at all.
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(reason if code is None else f"{reason} (close code {code})")
        self.code = code
        self.reason = reason


class RequestFailed(PresenceClientError):
    """The server answered a request with an ``error``."""

    def __init__(self, code: ErrorCode, message: str, request_id: str | None) -> None:
        super().__init__(f"{code.value}: {message}")
        self.code = code
        self.message = message
        self.request_id = request_id


class RequestTimeout(PresenceClientError):
    """No reply within ``request_timeout`` (the request may still take effect)."""


# --- events ------------------------------------------------------------------------


@frozen
class Disconnected:
    """The connection ended; ``reconnecting`` says whether the client tries again.

    ``code`` is the close code (1006: the socket dropped; None: the client gave
    up on a silent server). With ``reconnecting`` False this is the last event.
    """

    code: int | None
    reason: str
    reconnecting: bool


@frozen
class Reconnected:
    """A new connection is up, after ``attempts`` tries; requests work again."""

    welcome: Welcome
    attempts: int


@frozen
class EventsDropped:
    """``count`` events were dropped because the consumer fell behind (see the module doc)."""

    count: int


ClientEvent = UserStatusChange | PresenceState | Error | Disconnected | Reconnected | EventsDropped


@frozen
class Backoff:
    """Reconnect delays: exponential from ``initial``, capped at ``maximum``, jittered.

    Half of each step is fixed and half random ("equal jitter"): clients dropped
    together by a server restart spread out, and none retries in a tight loop.
    The first retry comes quickly, well inside the server's grace period.
    """

    initial: float = 0.25
    maximum: float = 30.0
    factor: float = 2.0

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds before retry number ``attempt`` (from 0); ``rand`` is uniform in [0, 1)."""
        step = min(self.maximum, self.initial * self.factor**attempt)
        return step / 2 + rand * step / 2


# --- the client ----------------------------------------------------------------------


@frozen
class _Loss:
    code: int | None
    reason: str


@define(eq=False)
class _Pending:
    """The one-shot reply slot of a request in flight."""

    done: trio.Event = field(factory=trio.Event)
    reply: ServerMessage | None = None
    error: PresenceClientError | None = None

    def settle(self, reply: ServerMessage | None, error: PresenceClientError | None) -> None:
        if not self.done.is_set():
            self.reply, self.error = reply, error
            self.done.set()


@define(eq=False)
class _Link:
    """One WebSocket connection and the requests awaiting replies on it."""

    ws: WebSocketConnection
    welcome: Welcome
    scope: trio.CancelScope = field(factory=trio.CancelScope)
    pending: dict[str, _Pending] = field(factory=dict)
    loss: _Loss | None = None

    def end(self, loss: _Loss) -> None:
        """Stop serving this connection; the first reason given is kept."""
        if self.loss is None:
            self.loss = loss
        self.scope.cancel()


@define(eq=False)
class _Options:
    url: str
    user_id: str | None
    device_id: str | None  # filled in from the first welcome when the caller gave none
    device_type: DeviceType
    observer: bool
    token: str | None
    reconnect: bool
    connect_timeout: float
    request_timeout: float
    backoff: Backoff


class PresenceClient:
    """A connected client; create it with :func:`open_presence_client`.

    Ordering: events are delivered in the order their frames arrived, and a
    reply wakes its request before any later frame is handled. Across a
    reconnect, every request of the old connection has failed before
    :class:`Reconnected` is delivered.
    """

    def __init__(self, options: _Options, event_buffer: int) -> None:
        self._options = options
        self._events_send, self._events = trio.open_memory_channel[ClientEvent](event_buffer)
        self._dropped = 0
        self._ids = itertools.count(1)
        self._link: _Link | None = None
        self._scope = trio.CancelScope()  # the connections task's, not the caller's block
        self._closing = False  # no reconnect wanted (aclose or logout)
        self._closed = False  # aclose was called
        self._finished = trio.Event()  # the connections task is done, events have ended
        self.welcome: Welcome | None = None
        """The latest connection's ``welcome`` (set before the client is handed out)."""

    @property
    def connected(self) -> bool:
        return self._link is not None

    @property
    def device_id(self) -> str | None:
        """This client's deviceId: the caller's, else the server's choice at first connect."""
        return self._options.device_id

    def events(self) -> trio.MemoryReceiveChannel[ClientEvent]:
        """Pushes, unsolicited ``presence_state`` and errors, and connection changes.

        One consumer is expected (several would split the events between them).
        Iteration ends when the client is closed or gives up reconnecting.
        """
        return self._events

    # Only these two have no reply; mypy calls the overlap with the next one unsafe.
    @overload
    async def request(self, message: Activity | Logout) -> None: ...  # type: ignore[overload-overlap]

    @overload
    async def request(self, message: ClientMessage) -> ServerMessage: ...

    async def request(self, message: ClientMessage) -> ServerMessage | None:
        """Send ``message`` and return the reply carrying its ``requestId``.

        A ``requestId`` is assigned when the message has none. ``activity`` is only
        sent. ``logout`` ends the client: it returns once the server has closed the
        connection (or ``request_timeout`` passed), and no reconnect follows.

        Raises RequestFailed for an ``error`` reply, RequestTimeout after
        ``request_timeout``, ConnectionLost if the connection is down or drops
        before the reply, and trio.ClosedResourceError once the client is closed
        or has given up reconnecting.

        Cancelled while waiting for the reply, the call only abandons the reply.
        (A send cancelled half-way, possible only while the socket is backed up,
        may break the connection, as with any trio stream; the client reconnects.)
        """
        if self._closing or self._finished.is_set():
            raise trio.ClosedResourceError("the presence client is closed")
        link = self._link
        if link is None:
            raise ConnectionLost(None, "not connected (reconnecting)")
        if isinstance(message, Activity):
            await self._send(link, message)
            return None
        if isinstance(message, Logout):
            await self._logout(link, message)
            return None
        return await self._ask(link, message, self._options.request_timeout)

    async def aclose(self) -> None:
        """Close the connection (code 1000) and stop; safe to call twice.

        Ends :meth:`events`. Waits at most CLOSE_TIMEOUT for the server, even when
        cancelled. The server applies its grace period, as for any lost
        connection; ``request(Logout())`` is the way to go offline at once.
        """
        if self._closed:
            return
        self._closed = self._closing = True
        link = self._link
        if link is not None:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await link.ws.aclose(1000, "client closed")
        self._scope.cancel()

    # --- requests --------------------------------------------------------------------

    async def _send(self, link: _Link, message: ClientMessage) -> None:
        try:
            await link.ws.send_message(codec.encode_client_message(message))
        except ConnectionClosed as exc:
            raise _lost(exc) from None

    async def _ask(self, link: _Link, message: ClientMessage, within: float) -> ServerMessage:
        if message.request_id is None:
            message = attrs.evolve(message, request_id=f"c{next(self._ids)}")
        request_id = message.request_id
        assert request_id is not None
        if request_id in link.pending:
            raise ValueError(f"requestId {request_id!r} is already in flight")
        slot = link.pending[request_id] = _Pending()
        try:
            await self._send(link, message)
            with trio.move_on_after(within):
                await slot.done.wait()
        finally:
            del link.pending[request_id]
        if slot.error is not None:
            raise slot.error
        if slot.reply is None:
            raise RequestTimeout(f"no reply to {message.TYPE} {request_id!r} within {within} s")
        return slot.reply

    async def _logout(self, link: _Link, message: Logout) -> None:
        self._closing = True  # the server closes with 1000: nothing to reconnect
        await self._send(link, message)
        with trio.move_on_after(self._options.request_timeout):
            await self._finished.wait()
        await self.aclose()  # a no-op unless the server failed to close in time

    # --- connections -----------------------------------------------------------------

    async def _run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the connections until the client closes or gives up.

        Failures of the first connection are raised from ``nursery.start``; later
        ones become events. Never raises after ``started``.
        """
        try:
            with self._scope:
                loss: _Loss | None = await self._connect(lambda _: task_status.started())
                while loss is not None and not self._closed:  # our own aclose is no news
                    again = (
                        self._options.reconnect
                        and not self._closing
                        and loss.code not in _FINAL_CLOSE_CODES
                    )
                    self._emit(Disconnected(loss.code, loss.reason, reconnecting=again))
                    loss = await self._reconnect() if again else None
        finally:
            self._events_send.close()
            self._finished.set()

    async def _reconnect(self) -> _Loss | None:
        """Retry until a connection is made and later lost (that loss is returned),
        or the server refuses for good (None)."""
        attempt = 0
        while True:
            await trio.sleep(self._options.backoff.delay(attempt, random.random()))
            attempt += 1
            try:
                return await self._connect(partial(self._reconnected, attempt))
            except ConnectionRefused as exc:
                if exc.code in _PERMANENT_REFUSALS:
                    self._emit(Disconnected(_CLOSE_POLICY, str(exc), reconnecting=False))
                    return None
                log.info("reconnect attempt %d refused: %s", attempt, exc)
            except ConnectError as exc:
                log.info("reconnect attempt %d failed: %s", attempt, exc)

    def _reconnected(self, attempts: int, welcome: Welcome) -> None:
        self._emit(Reconnected(welcome, attempts))

    async def _connect(self, ready: Callable[[Welcome], None]) -> _Loss:
        """One connection: open it, take the welcome, call ``ready``, serve it until lost.

        Raises ConnectError, ConnectTimeout or ConnectionRefused before ``ready``.
        """
        options = self._options
        deadline = trio.current_time() + options.connect_timeout
        headers = [(b"authorization", f"Bearer {options.token}".encode())] if options.token else []
        try:
            async with open_websocket_url(
                self._url(), extra_headers=headers, connect_timeout=options.connect_timeout
            ) as ws:
                return await self._serve(ws, deadline, ready)
        except ConnectionTimeout:
            raise ConnectTimeout(self._timeout_message()) from None
        except HandshakeError as exc:
            raise ConnectError(f"cannot connect to {options.url}: {_problem(exc)}") from None

    async def _serve(
        self, ws: WebSocketConnection, deadline: float, ready: Callable[[Welcome], None]
    ) -> _Loss:
        with trio.move_on_at(deadline) as waited:
            first = await _first_message(ws)
        if waited.cancelled_caught:
            raise ConnectTimeout(self._timeout_message())
        match first:
            case Welcome():
                welcome = first
            case Error(code=code, message=message):
                raise ConnectionRefused(code, message)
            case None:
                raise ConnectError(f"{self._options.url} closed the connection without a welcome")
            case _:
                raise ConnectError(f"expected welcome from {self._options.url}, got {first.TYPE}")
        link = _Link(ws, welcome)
        self._options.device_id = welcome.device_id
        self.welcome = welcome
        self._link = link
        ready(welcome)
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeats, link)
                    await self._read(link)
        finally:
            self._link = None
            # No loss recorded: the whole client is being cancelled, the return is moot.
            loss = link.loss or _Loss(None, "client cancelled")
            for slot in link.pending.values():
                slot.settle(None, ConnectionLost(loss.code, loss.reason))
            with trio.move_on_after(CLOSE_TIMEOUT):
                await ws.aclose()
        return loss

    async def _read(self, link: _Link) -> None:
        while True:
            try:
                frame = await link.ws.get_message()
            except ConnectionClosed as exc:
                lost = _lost(exc)
                link.end(_Loss(lost.code, lost.reason))
                return
            try:
                message = codec.decode_server_message(frame)
            except codec.ServerMessageError as exc:
                # A newer server may send types this client does not know: skip them.
                log.warning("skipping a server message: %s", exc)
                continue
            self._dispatch(link, message)

    def _dispatch(self, link: _Link, message: ServerMessage) -> None:
        slot = link.pending.get(message.request_id) if message.request_id else None
        if slot is not None:
            if isinstance(message, Error):
                slot.settle(None, RequestFailed(message.code, message.message, message.request_id))
            else:
                slot.settle(message, None)
        elif isinstance(message, UserStatusChange | PresenceState | Error):
            self._emit(message)
        # Anything else answers a request that timed out or was cancelled: nobody waits.

    async def _heartbeats(self, link: _Link) -> None:
        """Heartbeat at the server's pace; a server silent past ``heartbeatTimeout``
        is treated as gone (a half-open TCP connection never reports itself)."""
        interval = link.welcome.heartbeat_interval
        while True:
            await trio.sleep(interval)
            try:
                ack = await self._ask(link, Heartbeat(), link.welcome.heartbeat_timeout)
            except RequestTimeout:
                link.end(_Loss(None, "the server stopped answering heartbeats"))
                return
            except ConnectionLost:
                return  # the reader sees the close too, and ends the link
            if isinstance(ack, HeartbeatAck):
                interval = ack.next_heartbeat_in_seconds

    def _emit(self, event: ClientEvent) -> None:
        """Queue ``event`` without waiting; drop it when the buffer is full."""
        try:
            if self._dropped:
                self._events_send.send_nowait(EventsDropped(self._dropped))
                self._dropped = 0
            self._events_send.send_nowait(event)
        except trio.WouldBlock:
            self._dropped += 1
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the consumer closed its end: nobody wants events any more

    def _url(self) -> str:
        options = self._options
        if options.observer:
            return websocket_url(options.url, {"observer": "1"})
        params = {
            "userId": options.user_id,
            "deviceId": options.device_id,
            "deviceType": options.device_type.value,
        }
        return websocket_url(options.url, {k: v for k, v in params.items() if v is not None})

    def _timeout_message(self) -> str:
        return f"no welcome from {self._options.url} within {self._options.connect_timeout} s"


async def _first_message(ws: WebSocketConnection) -> ServerMessage | None:
    """The first frame, decoded; None if the server closed without sending one."""
    try:
        frame = await ws.get_message()
    except ConnectionClosed:
        return None
    try:
        return codec.decode_server_message(frame)
    except codec.ServerMessageError as exc:
        raise ConnectError(f"the server's first message is not a welcome: {exc}") from None


def _lost(exc: ConnectionClosed) -> ConnectionLost:
    reason = exc.reason
    if reason is None:
        return ConnectionLost(None, "the connection is closed")
    # int(): wsproto gives the codes it knows as an IntEnum, whose repr is noise.
    return ConnectionLost(int(reason.code), reason.reason or reason.name)


def _problem(exc: HandshakeError) -> str:
    if isinstance(exc, ConnectionRejected):
        return f"HTTP {exc.status_code} instead of a WebSocket upgrade"
    return str(exc.__cause__ or exc) or type(exc).__name__


def websocket_url(url: str, params: dict[str, str]) -> str:
    """``url`` as a WebSocket endpoint with ``params`` added to its query.

    ``http(s)://`` becomes ``ws(s)://``; an empty path (a server's base URL)
    becomes ``/ws``. Raises ValueError for any other kind of URL.
    """
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    if scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"not a ws://, wss://, http:// or https:// URL: {url!r}")
    path = parts.path if parts.path not in ("", "/") else "/ws"
    query = urlencode([*parse_qsl(parts.query), *params.items()])
    return urlunsplit((scheme, parts.netloc, path, query, ""))


@asynccontextmanager
async def open_presence_client(
    url: str,
    user_id: str | None,
    *,
    device_id: str | None = None,
    device_type: DeviceType | str = DeviceType.OTHER,
    observer: bool = False,
    token: str | None = None,
    reconnect: bool = True,
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    backoff: Backoff = Backoff(),  # frozen: sharing the default is safe
    event_buffer: int = DEFAULT_EVENT_BUFFER,
) -> AsyncIterator[PresenceClient]:
    """Connect to the server at ``url`` as ``user_id`` and yield the client once welcomed.

    ``url`` is the server's base URL (``http://host:port``) or its WebSocket URL
    (``ws://host:port/ws``). ``user_id`` may be None when ``token`` (a JWT, sent
    as ``Authorization: Bearer``) names the user, or for an ``observer``: a
    read-only session that is nobody's device (the server must allow it,
    ``web.observer``). Without ``device_id`` the server picks one at the first
    connection and every reconnect reuses it.

    Raises ConnectError (ConnectTimeout) when the server cannot be reached and
    welcome the client within ``connect_timeout`` seconds, ConnectionRefused
    when it answers with an error (bad userId, unauthorized, too many
    sessions). Leaving the block closes the client (see ``aclose``); an
    exception raised in the block propagates unwrapped.
    """
    if observer and user_id is not None:
        raise ValueError("an observer is nobody: pass user_id=None")
    options = _Options(
        url=url,
        user_id=user_id,
        device_id=device_id,
        device_type=DeviceType(device_type),
        observer=observer,
        token=token,
        reconnect=reconnect,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        backoff=backoff,
    )
    client = PresenceClient(options, event_buffer)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(client._run)
            try:
                yield client
            finally:
                await client.aclose()
    except BaseExceptionGroup as group:
        # The connections task never raises after it started, so a group holds
        # what the block (or the first connection) raised: hide the nursery.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
