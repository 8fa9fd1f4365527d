"""``presence.v1.PresenceService`` over gRPC, gRPC-Web and Connect, on the server's one port.

connectrpc's ASGI application speaks the three protocols (binary protobuf or
JSON); :class:`PresenceGrpcService` implements the service on the engine,
with the sessions of :mod:`.grpc_sessions`. Every refusal is a gRPC status
whose message starts with the protocol's error code (``"INVALID_STATUS: ..."``,
see :data:`GRPC_CODES`).

Who calls: ``Authenticator.acting_user`` decides, from the ``authorization``
metadata and the ``user_id`` the request claims (``viewer_id`` for reads). A
read or a stream that names nobody in ``none`` mode is anonymous: it sees what
anyone may see, like an ``/api`` read.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import trio
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext

from ..actors import ANONYMOUS, Engine, SessionHandle, ViewsQuery
from ..actors.session import CLOSE_TRY_AGAIN_LATER
from ..config import Settings
from ..model import MAX_STATUS_MESSAGE, Status, UserView, user_id_problem
from ..protocol import ErrorCode, ProtocolError
from .asgi import MAX_BODY, Message, Receive, Scope, Send
from .auth import Authenticator, AuthError, Identity
from .grpc_gen.presence.v1 import presence_pb as pb
from .grpc_gen.presence.v1.presence_connect import (
    PresenceService,
    PresenceServiceASGIApplication,
)
from .grpc_guard import CODECS, COMPRESSIONS, rpc_receive
from .grpc_sessions import TtlSessions, open_watcher
from .grpc_unary import PATH as BULK_STATUS_PATH
from .grpc_unary import FastBulkStatus
from .http_params import user_ids_problem

# Every protocol error code as a gRPC status code.
GRPC_CODES: dict[ErrorCode, Code] = {
    ErrorCode.INVALID_JSON: Code.INVALID_ARGUMENT,
    ErrorCode.INVALID_MESSAGE: Code.INVALID_ARGUMENT,
    ErrorCode.UNKNOWN_TYPE: Code.UNIMPLEMENTED,
    ErrorCode.INVALID_STATUS: Code.INVALID_ARGUMENT,
    ErrorCode.INVALID_USER_ID: Code.INVALID_ARGUMENT,
    ErrorCode.USER_NOT_FOUND: Code.NOT_FOUND,
    ErrorCode.UNAUTHORIZED: Code.UNAUTHENTICATED,
    ErrorCode.FORBIDDEN: Code.PERMISSION_DENIED,
    ErrorCode.RATE_LIMITED: Code.RESOURCE_EXHAUSTED,
    ErrorCode.TOO_LARGE: Code.RESOURCE_EXHAUSTED,
    ErrorCode.LIMIT_EXCEEDED: Code.RESOURCE_EXHAUSTED,
    ErrorCode.STORE_ERROR: Code.UNAVAILABLE,
    ErrorCode.INTERNAL: Code.INTERNAL,
}

_TO_WIRE = {
    Status.ONLINE: pb.UserStatus.ONLINE,
    Status.OFFLINE: pb.UserStatus.OFFLINE,
    Status.AWAY: pb.UserStatus.AWAY,
    Status.BUSY: pb.UserStatus.BUSY,
}
_FROM_WIRE = {wire: status for status, wire in _TO_WIRE.items()}


def grpc_error(code: ErrorCode, message: str) -> ConnectError:
    return ConnectError(GRPC_CODES[code], f"{code.value}: {message}")


@contextmanager
def _as_grpc_status() -> Iterator[None]:
    """Turn refusals (and an engine that does not answer in time) into gRPC statuses."""
    try:
        yield
    except (ProtocolError, AuthError) as exc:
        raise grpc_error(exc.code, exc.message) from None
    except trio.TooSlowError:
        raise ConnectError(
            Code.UNAVAILABLE, "INTERNAL: the server did not answer in time; try again"
        ) from None


def user_status_data(view: UserView) -> pb.UserStatusData:
    return pb.UserStatusData(
        user_id=view.user_id,
        status=_TO_WIRE[view.status],
        last_seen=view.last_seen or 0,
        status_message=view.status_message or "",
        username=view.username or "",
    )


# The message of each user's current view, built once per view object (the
# directory's views live until they change, and protobuf-py messages may be shared
# by several responses: encoding only reads them). Never mutated once cached.
_MESSAGE_LIMIT = 100_000
_messages: dict[str, tuple[UserView, pb.UserStatusData]] = {}


def user_status_message(view: UserView) -> pb.UserStatusData:
    """``user_status_data(view)``, cached per view object (do not change the result)."""
    entry = _messages.get(view.user_id)
    if entry is not None and entry[0] is view:
        return entry[1]
    message = user_status_data(view)
    if entry is None and len(_messages) >= _MESSAGE_LIMIT:
        _messages.clear()
    _messages[view.user_id] = (view, message)
    return message


def status_event(view: UserView, timestamp: int) -> pb.StatusUpdateEvent:
    return pb.StatusUpdateEvent(
        user_id=view.user_id,
        status=_TO_WIRE[view.status],
        timestamp=timestamp,
        last_seen=view.last_seen or 0,
        status_message=view.status_message or "",
        username=view.username or "",
    )


def _stream_closed(handle: SessionHandle) -> ConnectError:
    """Why a stream whose watcher was closed ends (UNAVAILABLE: subscribe again)."""
    if handle.close_code == CLOSE_TRY_AGAIN_LATER:
        return ConnectError(
            Code.UNAVAILABLE, "LIMIT_EXCEEDED: the stream fell too far behind; subscribe again"
        )
    return ConnectError(Code.UNAVAILABLE, f"INTERNAL: {handle.close_reason}")


def _status_of(value: pb.UserStatus) -> Status:
    status = _FROM_WIRE.get(value)
    if status is None:
        raise ProtocolError(
            ErrorCode.INVALID_STATUS,
            f"status must be ONLINE (1), OFFLINE (2), AWAY (3) or BUSY (4), got {int(value)}",
        )
    return status


class PresenceGrpcService(PresenceService):
    """The service on the engine. Methods raise ConnectError for every refusal."""

    def __init__(self, engine: Engine, settings: Settings, auth: Authenticator) -> None:
        self._engine = engine
        self._settings = settings
        self._auth = auth
        self.ttl_sessions = TtlSessions(engine)
        self._streams: set[SessionHandle] = set()

    def close_streams(self, code: int, reason: str) -> None:
        """End every open stream with UNAVAILABLE once it sent what was queued."""
        for handle in list(self._streams):
            handle.request_close(code, reason)

    async def set_user_status(
        self,
        request: pb.SetUserStatusRequest,
        ctx: RequestContext[pb.SetUserStatusRequest, pb.SetUserStatusResponse],
    ) -> pb.SetUserStatusResponse:
        """ONLINE, AWAY, BUSY: open or refresh the caller's TTL session and set its status.

        OFFLINE: log that session out (no grace period; ``status_message`` is
        ignored). The reply shows the caller's effective status afterwards.
        """
        with _as_grpc_status():
            user_id = self._caller(ctx, request.user_id)
            status = _status_of(request.status)
            if status is Status.OFFLINE:
                ended = await self.ttl_sessions.end(user_id)
                text = "gRPC session ended" if ended else "no gRPC session to end"
            else:
                await self.ttl_sessions.set_status(user_id, status, self._status_message(request))
                text = f"gRPC session is {status.value}"
            [view] = await self._views(user_id, (user_id,))
            return pb.SetUserStatusResponse(success=True, message=text, data=user_status_data(view))

    async def get_user_status(
        self,
        request: pb.GetUserStatusRequest,
        ctx: RequestContext[pb.GetUserStatusRequest, pb.GetUserStatusResponse],
    ) -> pb.GetUserStatusResponse:
        """One user; an unknown or hidden one is OFFLINE with last_seen 0 (never NOT_FOUND)."""
        with _as_grpc_status():
            viewer = self._viewer(ctx.request_headers, request.viewer_id, "viewer_id")
            [view] = await self._views(viewer.user_id, self._target(request.user_id))
            return pb.GetUserStatusResponse(success=True, data=user_status_message(view))

    async def get_multiple_user_status(
        self,
        request: pb.GetMultipleUserStatusRequest,
        ctx: RequestContext[pb.GetMultipleUserStatusRequest, pb.GetMultipleUserStatusResponse],
    ) -> pb.GetMultipleUserStatusResponse:
        """Users in the order asked (an empty list gives an empty answer)."""
        return await self.multiple_status(ctx.request_headers, request)

    async def multiple_status(
        self, headers: Mapping[str, str], request: pb.GetMultipleUserStatusRequest
    ) -> pb.GetMultipleUserStatusResponse:
        """``get_multiple_user_status`` from the call's headers (also :mod:`.grpc_unary`'s)."""
        with _as_grpc_status():
            viewer = self._viewer(headers, request.viewer_id, "viewer_id")
            targets = self._targets(request.user_ids, "user_ids")
            views = await self._views(viewer.user_id, targets) if targets else []
            return pb.GetMultipleUserStatusResponse(
                success=True, data=[user_status_message(v) for v in views]
            )

    async def subscribe_status_updates(
        self,
        request: pb.SubscribeStatusUpdatesRequest,
        ctx: RequestContext[pb.SubscribeStatusUpdatesRequest, pb.StatusUpdateEvent],
    ) -> AsyncIterator[pb.StatusUpdateEvent]:
        """Each watched user's current state (in the order asked), then every visible change.

        Runs until the client cancels (its watcher is detached at once), the
        caller's token expires (UNAUTHENTICATED), the stream falls
        ``limits.outbound_queue`` changes behind or the server shuts down
        (UNAVAILABLE).
        """
        with _as_grpc_status():
            viewer = self._viewer(ctx.request_headers, request.user_id, "user_id")
            targets = self._targets(request.watch_user_ids, "watch_user_ids")
            if not targets:
                raise ProtocolError(ErrorCode.INVALID_MESSAGE, "watch_user_ids must not be empty")
            expires = self._expiry(viewer)
            capacity = self._settings.limits.outbound_queue
            watcher_id = viewer.user_id or ANONYMOUS
            max_bytes = self._settings.limits.outbound_bytes
            async with open_watcher(self._engine, watcher_id, capacity, max_bytes) as watcher:
                self._streams.add(watcher.handle)
                try:
                    state = await watcher.subscribe(targets)
                    for view in state.users:
                        yield status_event(view, state.timestamp)
                    while True:
                        # No cancel scope spans a yield: the deadline covers the wait only.
                        with trio.move_on_at(expires) as waiting:
                            push = await watcher.next_push()
                        if waiting.cancelled_caught:
                            raise grpc_error(ErrorCode.UNAUTHORIZED, "token expired")
                        if push is None:
                            raise _stream_closed(watcher.handle)
                        yield status_event(push.view, push.timestamp)
                finally:
                    self._streams.discard(watcher.handle)

    async def send_heartbeat(
        self,
        request: pb.SendHeartbeatRequest,
        ctx: RequestContext[pb.SendHeartbeatRequest, pb.SendHeartbeatResponse],
    ) -> pb.SendHeartbeatResponse:
        """Keep the caller's TTL session alive; NOT_FOUND when it has none (it expired).

        ``next_heartbeat_in_seconds`` is ``presence.heartbeat_interval``, whole
        seconds rounded down, at least 1.
        """
        with _as_grpc_status():
            user_id = self._caller(ctx, request.user_id)
            ack = await self.ttl_sessions.heartbeat(user_id, active=request.active)
            interval = max(1, math.floor(ack.next_heartbeat_in_seconds))
            return pb.SendHeartbeatResponse(success=True, next_heartbeat_in_seconds=interval)

    # --- helpers -------------------------------------------------------------------

    def _caller(self, ctx: RequestContext[Any, Any], claimed: str) -> str:
        """The user an RPC that changes presence acts as."""
        identity = self._auth.acting_user(dict(ctx.request_headers), claimed)
        assert identity.user_id is not None
        return identity.user_id

    def _viewer(self, headers: Mapping[str, str], claimed: str, name: str) -> Identity:
        """Who reads or watches; anonymous when it names nobody in ``none`` mode."""
        if not claimed and self._settings.auth.mode == "none":
            return Identity(None)
        return self._auth.acting_user(dict(headers), claimed, name)

    def _target(self, user_id: str) -> tuple[str]:
        _check_user_id(user_id, "user_id")
        return (user_id,)

    def _targets(self, user_ids: list[str], name: str) -> tuple[str, ...]:
        most = self._settings.limits.max_ids_per_request
        if len(user_ids) > most:
            raise ProtocolError(ErrorCode.LIMIT_EXCEEDED, f"at most {most} user ids per request")
        if user_ids:
            problem = user_ids_problem(user_ids, name)
            if problem is not None:
                raise ProtocolError(ErrorCode.INVALID_USER_ID, problem)
        return tuple(user_ids)

    def _status_message(self, request: pb.SetUserStatusRequest) -> str | None:
        if not request.has_field("status_message"):
            return None
        if len(request.status_message) > MAX_STATUS_MESSAGE:
            raise ProtocolError(
                ErrorCode.INVALID_MESSAGE,
                f"status_message is limited to {MAX_STATUS_MESSAGE} characters",
            )
        return request.status_message

    async def _views(self, viewer: str | None, user_ids: tuple[str, ...]) -> list[UserView]:
        views: list[UserView] = await self._engine.ask(ViewsQuery(viewer, user_ids))
        return views

    def _expiry(self, viewer: Identity) -> float:
        """The trio time the viewer's token expires at (inf without one)."""
        if viewer.expires_at is None:
            return math.inf
        now = self._engine.clock.now_ms() / 1000
        return trio.current_time() + (viewer.expires_at - now)


def _check_user_id(user_id: str, name: str) -> None:
    problem = user_id_problem(user_id or None, name)  # proto3: "" is a field not sent
    if problem is not None:
        raise ProtocolError(ErrorCode.INVALID_USER_ID, problem)


class GrpcGateway:
    """Serves the ``/presence.v1.PresenceService/*`` paths (gRPC, gRPC-Web, Connect)."""

    PREFIX = "/presence.v1.PresenceService/"

    def __init__(self, engine: Engine, settings: Settings, auth: Authenticator) -> None:
        self.service = PresenceGrpcService(engine, settings, auth)
        self._app = PresenceServiceASGIApplication(
            self.service, read_max_bytes=MAX_BODY, codecs=CODECS, compressions=COMPRESSIONS
        )
        self.bulk_status = FastBulkStatus(self.service.multiple_status, self._app)

    def close_all(self, code: int, reason: str) -> None:
        """End the open streams (on shutdown, beside ``WebSocketGateway.close_all``)."""
        self.service.close_streams(code, reason)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one RPC (an HTTP request under ``PREFIX``).

        A client that goes away (a cancelled call, a lost connection) cancels
        its handler at once: hypercorn only reports the disconnect, and a
        stream waiting for the next change would otherwise hold its watcher
        until that change came.
        """
        with trio.CancelScope() as request_scope:
            receive_rpc = rpc_receive(receive)

            async def receive_watching() -> Message:
                message = await receive_rpc()
                if message["type"] == "http.disconnect":
                    request_scope.cancel()
                return message

            if scope["path"] == BULK_STATUS_PATH:
                await self.bulk_status.handle(scope, receive_watching, send)
            else:
                await self._app(scope, receive_watching, send)
