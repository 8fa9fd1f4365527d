"""``GET /ws``: one WebSocket connection is one session of the engine.

A session reads messages, checks size and rate, decodes them with the codec
and submits them to the engine; what the engine sends goes to the
connection's outbox. Connections come two ways: upgrades that reach the port
directly are served on their own socket (:mod:`ws_direct`, the fast path),
others through hypercorn's ASGI interface (:mod:`ws_asgi`). The engine closes a
session by calling ``close`` (from its own task): that cancels the session,
whose cleanup detaches it from the engine and ends the connection with the code.
"""

from __future__ import annotations

import logging
import math
import os
import secrets

import orjson
import trio

from .. import codec
from ..actors import Engine, SessionHandle
from ..actors.session import (
    ANONYMOUS,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    Outbox,
    Outgoing,
)
from ..config import Settings
from ..metrics import Metrics
from ..model import DeviceType, is_valid_user_id
from ..protocol import Error, ErrorCode, ProtocolError
from .asgi import Receive, Scope, Send, headers_of, query_of
from .auth import Authenticator, AuthError, Identity
from .handshake import HandshakeError, accept_upgrade
from .ratelimit import RateLimiter, Verdict
from .ws_asgi import AsgiConnection
from .ws_direct import DirectConnection
from .wsconn import TOO_LARGE, Connection

log = logging.getLogger("presence_actors.websocket")

CLOSE_TOO_LARGE = 1009


class WebSocketGateway:
    """Accepts ``/ws`` connections and keeps track of them for shutdown."""

    def __init__(
        self, engine: Engine, settings: Settings, auth: Authenticator, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.auth = auth
        self.metrics = metrics
        self.sessions: set[WebSocketSession] = set()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve a WebSocket that came through hypercorn (ASGI)."""
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        connection = AsgiConnection(receive, send, self.metrics, self.settings.limits)
        await self._serve(connection, query_of(scope), headers_of(scope))

    async def serve_direct(self, stream: trio.SocketStream, head: bytes) -> None:
        """Serve a WebSocket upgrade read straight off the socket (``head``: the bytes
        read so far, the request and whatever followed it)."""
        try:
            upgrade = accept_upgrade(head)
        except HandshakeError as exc:
            with trio.move_on_after(1):
                await stream.send_all(exc.response)
            await stream.aclose()
            return
        # The 101 goes in one write: a fresh socket's kernel buffer takes it whole,
        # without the stream's send machinery; what it does not take (or an error) is
        # left to send_all.
        response = upgrade.response
        try:
            sent = os.write(stream.socket.fileno(), response)
        except OSError:
            sent = 0
        if sent < len(response):
            await stream.send_all(response[sent:])
        connection = DirectConnection(stream, self.metrics, self.settings.limits)
        connection.feed(upgrade.rest)
        await self._serve(connection, upgrade.query, upgrade.headers)

    async def _serve(
        self, connection: Connection, query: dict[str, str], headers: dict[str, str]
    ) -> None:
        try:
            identity, device_id, device_type = self._admit(query, headers)
        except (AuthError, ProtocolError) as exc:
            error = Error(timestamp=self.engine.clock.now_ms(), code=exc.code, message=exc.message)
            connection.outbox.offer(error)
            await connection.finish(CLOSE_POLICY, exc.message)
            self.metrics.closes[CLOSE_POLICY] += 1
            return
        session = WebSocketSession(self, identity, device_id, device_type, connection)
        self.sessions.add(session)
        self.metrics.connections += 1
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
            self.metrics.connections -= 1

    def close_all(self, code: int, reason: str) -> None:
        for session in list(self.sessions):
            session.close(code, reason)

    def _admit(
        self, query: dict[str, str], headers: dict[str, str]
    ) -> tuple[Identity, str, DeviceType]:
        if query.get("observer") in ("1", "true"):
            if not self.settings.web.observer:
                raise AuthError(
                    ErrorCode.FORBIDDEN, "observer sessions are disabled (web.observer)", 403
                )
            self.auth.check_origin(headers)
            return Identity(None), "observer", DeviceType.OTHER
        identity = self.auth.websocket(query, headers)
        device_id = query.get("deviceId") or f"dev-{secrets.token_hex(6)}"
        if not is_valid_user_id(device_id):
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                "deviceId must be 1-128 characters from A-Z a-z 0-9 _ . : @ -",
            )
        try:
            device_type = DeviceType(query.get("deviceType") or "other")
        except ValueError:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE, "deviceType must be one of web, mobile, desktop, other"
            ) from None
        return identity, device_id, device_type


class WebSocketSession:
    def __init__(
        self,
        gateway: WebSocketGateway,
        identity: Identity,
        device_id: str,
        device_type: DeviceType,
        connection: Connection,
    ) -> None:
        self._gateway = gateway
        self._engine = gateway.engine
        self._limits = gateway.settings.limits
        self._connection = connection
        self._scope = trio.CancelScope()
        self._close_code: int | None = None
        self._close_reason = ""
        self._expires_at = identity.expires_at
        # An observer (no user) watches what an anonymous caller may see and is
        # nobody's device; with no actor to time it out, its reader does.
        self._observer = identity.user_id is None
        self._greeting: Outgoing | None = None
        self._greeted = trio.Event()
        self.handle = SessionHandle(
            session_id=secrets.token_hex(8),
            user_id=ANONYMOUS if identity.user_id is None else identity.user_id,
            device_id=device_id,
            device_type=device_type,
            outbox=_Greeting(self, connection.outbox),
            on_close=self.close,
            present=not self._observer,
        )

    def close(self, code: int, reason: str) -> None:
        """Ask the session to end with ``code``; safe from any task, the first call wins.

        The close starts here, synchronously: the engine offers nothing more
        (``handle.closing``) and the connection takes nothing more, so its
        close frame is the last thing it sends.
        """
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        self.handle.closing = True
        self._connection.begin_close(code, reason)
        self._scope.cancel()

    def greeted(self, item: Outgoing, outbox: Outbox) -> None:
        """The engine's first message (welcome, or the error refusing the session)."""
        self._greeting = item
        self.handle.outbox = outbox  # no more checking on the hot path
        self._greeted.set()

    async def run(self) -> None:
        """Serve the connection until the client leaves or the session is closed.

        The client is read only once the engine welcomed the session. Whatever
        ends it, the engine is told (the session is detached, so the grace
        period applies unless the engine ended it) and the connection is ended
        with the close code when the server ended it.
        """
        if self._expires_at is not None:
            self._scope.deadline = trio.current_time() + (
                self._expires_at - self._engine.clock.now_ms() / 1000
            )
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await self._connection.serve_writes(nursery)
                    await self._engine.attach(self.handle)
                    await self._greeted.wait()
                    if isinstance(self._greeting, Error):
                        self.close(CLOSE_POLICY, self._greeting.message)
                    else:
                        await self._reader()
                    nursery.cancel_scope.cancel()
            if self._scope.cancelled_caught and self._close_code is None:
                self._close_code, self._close_reason = CLOSE_TOKEN_EXPIRED, "token expired"
        finally:
            # Before any await: from here on nothing is offered to or written by
            # this session but its close (a no-op if the close started earlier),
            # and the handle, which the engine may keep a while, lets go of it.
            self.handle.unlink()
            self._connection.begin_close(self._close_code, self._close_reason)
            with trio.CancelScope(shield=True):
                await self._engine.detach(self.handle)
                if self._close_code is not None:
                    self._gateway.metrics.closes[self._close_code] += 1
                await self._connection.finish(self._close_code, self._close_reason)

    async def _reader(self) -> None:
        limiter = RateLimiter(
            self._limits.messages_per_second, self._limits.burst, self._limits.abuse_window
        )
        most = self._limits.max_message_bytes
        silence = self._gateway.settings.presence.heartbeat_timeout if self._observer else math.inf
        receive = self._connection.receive
        request = self._engine.request
        handle = self.handle
        messages_in = self._gateway.metrics.messages_in
        while True:
            if silence == math.inf:
                # A session's silence is its actor's heartbeat timer to judge: no
                # cancel scope per message here (an idle connection's main cost).
                incoming = await receive()
            else:
                with trio.move_on_after(silence) as waited:
                    incoming = await receive()
                if waited.cancelled_caught:
                    self.close(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
                    return
            if incoming is None:
                return  # the client left
            if incoming is TOO_LARGE:
                self._fail(ErrorCode.TOO_LARGE, f"frames are limited to {most} bytes", None)
                self.close(CLOSE_TOO_LARGE, "message too large")
                return
            # Every message counts against the rate, whatever it turns out to be.
            verdict = limiter.admit(trio.current_time())
            if verdict is not Verdict.ADMIT:
                self._fail(ErrorCode.RATE_LIMITED, "too many messages; slow down", None)
                if verdict is Verdict.CLOSE:
                    self.close(CLOSE_POLICY, "rate limit exceeded")
                    return
                continue
            if incoming == codec.BARE_HEARTBEAT_JSON:
                # The usual message by far: known without parsing it.
                messages_in["heartbeat"] += 1
                await request(handle, codec.BARE_HEARTBEAT)
                continue
            if isinstance(incoming, bytes):
                self._fail(
                    ErrorCode.INVALID_MESSAGE,
                    "binary frames are not accepted; send JSON text",
                    None,
                )
                continue
            try:
                raw = orjson.loads(incoming)
            except orjson.JSONDecodeError as exc:
                self._fail(ErrorCode.INVALID_JSON, f"invalid JSON: {exc}", None)
                continue
            try:
                message = codec.structure_client_message(raw)
            except ProtocolError as exc:
                self._fail(exc.code, exc.message, codec.request_id_of(raw))
                continue
            messages_in[message.TYPE] += 1
            await request(handle, message)

    def _fail(self, code: ErrorCode, message: str, request_id: str | None) -> None:
        self.handle.deliver(
            Error(
                timestamp=self._engine.clock.now_ms(),
                request_id=request_id,
                code=code,
                message=message,
            )
        )


class _Greeting:
    """The session's outbox until the engine's first message went through it."""

    def __init__(self, session: WebSocketSession, outbox: Outbox) -> None:
        self._session = session
        self._outbox = outbox

    def offer(self, item: Outgoing) -> bool:
        accepted = self._outbox.offer(item)
        self._session.greeted(item, self._outbox)
        return accepted
