"""``GET /ws``: one WebSocket connection is one session of the engine.

A session task reads frames, checks size and rate, decodes them with the codec
and submits them to the engine; a writer task drains the session's bounded
outbox onto the socket. The engine closes a session by calling ``close`` (from
its own task): that cancels the session, whose cleanup sends the close frame
and detaches from the engine.
"""

from __future__ import annotations

import logging
import math
import secrets

import orjson
import trio

from .. import codec
from ..actors import Engine, MemoryOutbox, SessionHandle
from ..actors.session import (
    ANONYMOUS,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_POLICY,
    CLOSE_TOKEN_EXPIRED,
    CLOSE_TRY_AGAIN_LATER,
    Outgoing,
)
from ..config import Settings
from ..metrics import Metrics
from ..model import DeviceType, is_valid_user_id
from ..protocol import Error, ErrorCode, ProtocolError, Push
from .asgi import Receive, Scope, Send, headers_of, query_of
from .auth import Authenticator, AuthError, Identity
from .ratelimit import RateLimiter, Verdict

log = logging.getLogger("presence_actors.websocket")

CLOSE_TOO_LARGE = 1009
# How long a close frame may take to go out before the session gives up on it.
CLOSE_SEND_TIMEOUT = 1.0


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
        connect = await receive()
        if connect["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        try:
            identity, device_id, device_type = self._admit(scope)
        except (AuthError, ProtocolError) as exc:
            await self._refuse(send, exc.code, exc.message)
            return
        session = WebSocketSession(self, identity, device_id, device_type, receive, send)
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

    def _admit(self, scope: Scope) -> tuple[Identity, str, DeviceType]:
        query = query_of(scope)
        if query.get("observer") in ("1", "true"):
            if not self.settings.web.observer:
                raise AuthError(
                    ErrorCode.FORBIDDEN, "observer sessions are disabled (web.observer)", 403
                )
            self.auth.check_origin(headers_of(scope))
            return Identity(None), "observer", DeviceType.OTHER
        identity = self.auth.websocket(query, headers_of(scope))
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

    async def _refuse(self, send: Send, code: ErrorCode, message: str) -> None:
        error = Error(timestamp=self.engine.clock.now_ms(), code=code, message=message)
        self.metrics.errors[code.value] += 1
        self.metrics.closes[CLOSE_POLICY] += 1
        await send({"type": "websocket.send", "text": codec.encode(error)})
        await send({"type": "websocket.close", "code": CLOSE_POLICY, "reason": message[:120]})


class WebSocketSession:
    def __init__(
        self,
        gateway: WebSocketGateway,
        identity: Identity,
        device_id: str,
        device_type: DeviceType,
        receive: Receive,
        send: Send,
    ) -> None:
        self._gateway = gateway
        self._engine = gateway.engine
        self._metrics = gateway.metrics
        self._limits = gateway.settings.limits
        self._receive = receive
        self._send = send
        self._outbox = MemoryOutbox(self._limits.outbound_queue)
        self._scope = trio.CancelScope()
        self._close_code: int | None = None
        self._close_reason = ""
        self._expires_at = identity.expires_at
        # An observer (no user) watches what an anonymous caller may see and is
        # nobody's device; with no actor to time it out, its reader does.
        self._observer = identity.user_id is None
        self.handle = SessionHandle(
            session_id=secrets.token_hex(8),
            user_id=ANONYMOUS if identity.user_id is None else identity.user_id,
            device_id=device_id,
            device_type=device_type,
            outbox=self._outbox,
            on_close=self.close,
            present=not self._observer,
        )

    def close(self, code: int, reason: str) -> None:
        """Ask the session to end with ``code``; safe from any task, the first call wins."""
        if self._close_code is None:
            self._close_code = code
            self._close_reason = reason
        self._scope.cancel()

    async def run(self) -> None:
        """Serve the connection until the client leaves or the session is closed.

        Whatever ends it, the engine is told (the session is detached, so the
        grace period applies unless the engine ended it) and, when the server
        ended it, the close frame is sent.
        """
        if self._expires_at is not None:
            self._scope.deadline = trio.current_time() + (
                self._expires_at - self._engine.clock.now_ms() / 1000
            )
        try:
            with self._scope:
                await self._engine.attach(self.handle)
                first = await self._outbox.receive.receive()
                await self._write(first)
                if isinstance(first, Error):
                    self.close(CLOSE_POLICY, first.message[:120])
                else:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._writer)
                        await self._reader()
                        nursery.cancel_scope.cancel()
            if self._scope.cancelled_caught and self._close_code is None:
                self._close_code, self._close_reason = CLOSE_TOKEN_EXPIRED, "token expired"
        finally:
            with trio.CancelScope(shield=True):
                await self._engine.detach(self.handle)
                if self._close_code is not None:
                    self._metrics.closes[self._close_code] += 1
                    with trio.move_on_after(CLOSE_SEND_TIMEOUT):
                        if self._close_code != CLOSE_TRY_AGAIN_LATER:
                            await self._flush()  # e.g. the error that explains the close
                        await self._send(
                            {
                                "type": "websocket.close",
                                "code": self._close_code,
                                "reason": self._close_reason[:120],
                            }
                        )

    async def _reader(self) -> None:
        limiter = RateLimiter(
            self._limits.messages_per_second, self._limits.burst, self._limits.abuse_window
        )
        most = self._limits.max_message_bytes
        silence = self._gateway.settings.presence.heartbeat_timeout if self._observer else math.inf
        while True:
            event = None
            with trio.move_on_after(silence):
                event = await self._receive()
            if event is None:
                self.close(CLOSE_HEARTBEAT_TIMEOUT, "heartbeat timeout")
                return
            if event["type"] != "websocket.receive":
                return  # websocket.disconnect: the client left
            text = event.get("text")
            if text is None:
                size = len(event.get("bytes") or b"")
                if size > most:
                    self._fail(ErrorCode.TOO_LARGE, f"frames are limited to {most} bytes", None)
                    self.close(CLOSE_TOO_LARGE, "message too large")
                    return
                self._fail(
                    ErrorCode.INVALID_MESSAGE,
                    "binary frames are not accepted; send JSON text",
                    None,
                )
                continue
            if len(text) > most or (len(text) * 4 > most and len(text.encode()) > most):
                self._fail(ErrorCode.TOO_LARGE, f"frames are limited to {most} bytes", None)
                self.close(CLOSE_TOO_LARGE, "message too large")
                return
            verdict = limiter.admit(trio.current_time())
            if verdict is not Verdict.ADMIT:
                self._fail(ErrorCode.RATE_LIMITED, "too many messages; slow down", None)
                if verdict is Verdict.CLOSE:
                    self.close(CLOSE_POLICY, "rate limit exceeded")
                    return
                continue
            try:
                raw = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                self._fail(ErrorCode.INVALID_JSON, f"invalid JSON: {exc}", None)
                continue
            try:
                message = codec.structure_client_message(raw)
            except ProtocolError as exc:
                self._fail(exc.code, exc.message, codec.request_id_of(raw))
                continue
            self._metrics.messages_in[message.TYPE] += 1
            await self._engine.request(self.handle, message)

    def _fail(self, code: ErrorCode, message: str, request_id: str | None) -> None:
        self.handle.deliver(
            Error(
                timestamp=self._engine.clock.now_ms(),
                request_id=request_id,
                code=code,
                message=message,
            )
        )

    async def _writer(self) -> None:
        async for item in self._outbox.receive:
            await self._write(item)

    async def _flush(self) -> None:
        """Send what is already queued (never waits for more)."""
        while True:
            try:
                item = self._outbox.receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            await self._write(item)

    async def _write(self, item: Outgoing) -> None:
        if isinstance(item, Push):
            text, kind = item.frame, "user_status_change"
        else:
            text, kind = codec.encode(item), item.TYPE
            if isinstance(item, Error):
                self._metrics.errors[item.code.value] += 1
        self._metrics.messages_out[kind] += 1
        # Shielded: a send cancelled half-way loses the frame inside hypercorn
        # (the frame is encoded before the socket lock is taken). Cancellation
        # lands between messages instead.
        with trio.CancelScope(shield=True):
            await self._send({"type": "websocket.send", "text": text})
