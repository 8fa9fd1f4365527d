"""``/api``: the REST reads (the polling fallback) and the admin routes.

Every answer comes from the engine (``Engine.ask``) or, for history, from a
read-only store connection in a worker thread; the caller's identity decides
what it may see, exactly as for a WebSocket session.
"""

from __future__ import annotations

import re
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from attrs import frozen

from .. import codec
from ..actors import Engine, ListQuery, LookupQuery, PolicyQuery, StatsQuery, ViewsQuery
from ..actors.messages import (
    AddContact,
    AdminCommand,
    RemoveContact,
    ReplaceContacts,
    SetVisibility,
)
from ..codec import view_fragment, view_to_wire
from ..config import Settings
from ..model import (
    UserView,
    Visibility,
    format_timestamp,
    public_reason,
)
from ..persistence.store import EventRecord
from ..persistence.writer import WriterNotRunning
from ..protocol import ErrorCode, ProtocolError
from .asgi import (
    BodyRefused,
    Receive,
    Scope,
    Send,
    headers_of,
    query_of,
    respond_error,
    respond_json,
)
from .auth import Authenticator, AuthError, Identity
from .http_params import (
    HttpError,
    cursor_param,
    integer_param,
    json_body,
    moment_param,
    status_param,
    user_id_param,
    user_ids_problem,
)

# HTTP status for each error code (PROTOCOL.md section 3).
_STATUS = {
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_MESSAGE: 400,
    ErrorCode.UNKNOWN_TYPE: 400,
    ErrorCode.INVALID_STATUS: 400,
    ErrorCode.INVALID_USER_ID: 400,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.LIMIT_EXCEEDED: 400,
    ErrorCode.STORE_ERROR: 503,
    ErrorCode.INTERNAL: 500,
}
_MAX_HISTORY = 1000
_MAX_LIST = 10_000
_ADMIN_USER = r"/api/admin/users/(?P<user_id>[^/]+)"


@frozen
class ContactsBody:
    contacts: tuple[str, ...]


@frozen
class PrivacyBody:
    visibility: Visibility


Handler = Callable[[Scope, Receive, dict[str, str]], Awaitable[tuple[int, Any]]]


class HttpApi:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        auth: Authenticator,
        connections: Callable[[], int],
        messages_in: Callable[[], Counter[str]],
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.auth = auth
        self.connections = connections
        self.messages_in = messages_in
        self.node = settings.server.node or socket.gethostname()
        self.started = time.monotonic()
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("GET", re.compile(r"/api/users"), self._users),
            ("GET", re.compile(r"/api/users/(?P<user_id>[^/]+)"), self._user),
            ("GET", re.compile(r"/api/users/(?P<user_id>[^/]+)/history"), self._history),
            ("GET", re.compile(r"/api/presence"), self._presence),
            ("GET", re.compile(r"/api/stats"), self._stats),
            ("GET", re.compile(_ADMIN_USER), self._admin_policy),
            ("PUT", re.compile(_ADMIN_USER + "/contacts"), self._replace_contacts),
            (
                "POST",
                re.compile(_ADMIN_USER + "/contacts/(?P<contact_id>[^/]+)"),
                self._add_contact,
            ),
            (
                "DELETE",
                re.compile(_ADMIN_USER + "/contacts/(?P<contact_id>[^/]+)"),
                self._remove_contact,
            ),
            ("PUT", re.compile(_ADMIN_USER + "/privacy"), self._set_privacy),
            ("GET", re.compile(r"/api/admin/events"), self._recent_events),
        ]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        allowed: list[str] = []
        for route_method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            if route_method != method:
                allowed.append(route_method)
                continue
            try:
                status, payload = await handler(scope, receive, match.groupdict())
            except (HttpError, AuthError, BodyRefused) as exc:
                await respond_error(send, exc.status, exc.code, exc.message)
            except ProtocolError as exc:
                await respond_error(send, _STATUS[exc.code], exc.code, exc.message)
            else:
                await respond_json(send, status, payload)
            return
        if allowed:
            await respond_error(
                send,
                405,
                ErrorCode.INVALID_MESSAGE,
                f"{method} is not allowed; use {', '.join(allowed)}",
            )
        else:
            await respond_error(
                send, 404, ErrorCode.INVALID_MESSAGE, f"no route for {method} {path}"
            )

    def caller(self, scope: Scope) -> Identity:
        return self.auth.http(headers_of(scope), query_of(scope))

    # --- reads ---------------------------------------------------------------------

    async def _users(self, scope: Scope, _: Receive, __: dict[str, str]) -> tuple[int, Any]:
        watcher = self.caller(scope).user_id
        query = query_of(scope)
        status = status_param(query.get("status"))
        limit = integer_param(query, "limit", 1000, most=_MAX_LIST, over=ErrorCode.LIMIT_EXCEEDED)
        page = await self.engine.ask(ListQuery(watcher, status, limit, cursor_param(query)))
        users = [view_to_wire(v) for v in page.users]
        return 200, {"success": True, "users": users, "nextCursor": page.next_cursor}

    async def _user(self, scope: Scope, _: Receive, params: dict[str, str]) -> tuple[int, Any]:
        user_id = user_id_param(params["user_id"], "userId")
        view = await self._known(self.caller(scope).user_id, user_id)
        return 200, {"success": True, "user": view_to_wire(view)}

    async def _known(self, watcher: str | None, user_id: str) -> UserView:
        """The view of a user the server knows and ``watcher`` may see; else 404."""
        view = await self.engine.ask(LookupQuery(watcher, user_id))
        if view is None:  # unknown and hidden look the same
            raise HttpError(404, ErrorCode.USER_NOT_FOUND, f"no user {user_id!r}")
        return view  # type: ignore[no-any-return]

    async def _presence(self, scope: Scope, _: Receive, __: dict[str, str]) -> tuple[int, Any]:
        query = query_of(scope)
        watcher = self.auth.http(headers_of(scope), query).user_id
        ids = tuple(i for i in query.get("ids", "").split(",") if i)
        if not ids:
            raise HttpError(
                400, ErrorCode.INVALID_MESSAGE, "ids: a comma-separated list of user ids"
            )
        most = self.settings.limits.max_ids_per_request
        if len(ids) > most:
            raise HttpError(400, ErrorCode.LIMIT_EXCEEDED, f"at most {most} ids per request")
        problem = user_ids_problem(ids, "ids")
        if problem is not None:
            raise HttpError(400, ErrorCode.INVALID_USER_ID, problem)
        views = await self.engine.ask(ViewsQuery(watcher, ids))
        return 200, orjson.Fragment(presence_body(views))

    async def _history(self, scope: Scope, _: Receive, params: dict[str, str]) -> tuple[int, Any]:
        user_id = user_id_param(params["user_id"], "userId")
        query = query_of(scope)
        since = moment_param(query, "since") or 0
        until = moment_param(query, "until")
        limit = integer_param(query, "limit", _MAX_HISTORY, most=_MAX_HISTORY)
        caller = self.caller(scope).user_id
        await self._known(caller, user_id)
        events = await self._read_store(self.engine.events.history(user_id, since, until, limit))
        return 200, {
            "success": True,
            "userId": user_id,
            "events": [
                {
                    "status": e.status.value,
                    "at": format_timestamp(e.at),
                    "reason": e.reason if caller == user_id else public_reason(e.reason),
                    "deviceId": e.device_id,
                }
                for e in events
            ],
        }

    # --- admin ---------------------------------------------------------------------

    async def _admin(self, scope: Scope, command: AdminCommand) -> None:
        """Apply ``command`` and return once it is committed (so it survives a crash).

        Refused (``STORE_ERROR``, nothing applied) while the store is failing.
        The commit is awaited at most ``persistence.admin_commit_timeout``; past
        it the answer is ``STORE_ERROR`` too: the change is applied and will be
        committed if the store recovers before the server stops, but it is not
        acknowledged, so the caller retries it (every admin change is idempotent).
        """
        self.auth.admin(headers_of(scope))
        writer = self.engine.writer
        if not writer.writable:
            raise HttpError(
                503,
                ErrorCode.STORE_ERROR,
                f"the store cannot be written ({writer.problem}); admin changes are refused"
                " until it recovers (see /readyz)",
            )
        await self.engine.command(command)
        timeout = self.settings.persistence.admin_commit_timeout
        try:
            with trio.fail_after(timeout):
                await writer.flush()
        except WriterNotRunning as exc:
            raise HttpError(503, ErrorCode.STORE_ERROR, str(exc)) from None
        except trio.TooSlowError:
            raise HttpError(
                503,
                ErrorCode.STORE_ERROR,
                f"the change was not committed within {timeout:g} s"
                f" ({writer.problem or 'the store is slow'}): it is not acknowledged;"
                " retry it once /readyz answers 200",
            ) from None

    async def _admin_policy(
        self, scope: Scope, _: Receive, params: dict[str, str]
    ) -> tuple[int, Any]:
        self.auth.admin(headers_of(scope))
        user_id = user_id_param(params["user_id"], "userId")
        policy = await self.engine.ask(PolicyQuery(user_id))
        return 200, {
            "success": True,
            "userId": user_id,
            "visibility": policy.visibility.value,
            "contacts": sorted(policy.contacts),
            "blocked": sorted(policy.blocked),
        }

    async def _replace_contacts(
        self, scope: Scope, receive: Receive, params: dict[str, str]
    ) -> tuple[int, Any]:
        self.auth.admin(headers_of(scope))
        user_id = user_id_param(params["user_id"], "userId")
        raw = await json_body(receive)
        if isinstance(raw, dict) and isinstance(raw.get("contacts"), list):
            for index, contact in enumerate(raw["contacts"]):
                user_id_param(contact, f"contacts[{index}]")
        body = codec.structure(raw, ContactsBody, "body")
        most = self.settings.limits.max_subscriptions
        if len(body.contacts) > most:
            raise HttpError(400, ErrorCode.LIMIT_EXCEEDED, f"at most {most} contacts")
        contacts = frozenset(body.contacts) - {user_id}
        await self._admin(scope, ReplaceContacts(user_id, contacts))
        return 200, {"success": True, "userId": user_id, "contacts": sorted(contacts)}

    async def _add_contact(
        self, scope: Scope, _: Receive, params: dict[str, str]
    ) -> tuple[int, Any]:
        user_id = user_id_param(params["user_id"], "userId")
        contact_id = user_id_param(params["contact_id"], "contactId")
        await self._admin(scope, AddContact(user_id, contact_id))
        return 200, {"success": True, "userId": user_id, "contactId": contact_id}

    async def _remove_contact(
        self, scope: Scope, _: Receive, params: dict[str, str]
    ) -> tuple[int, Any]:
        user_id = user_id_param(params["user_id"], "userId")
        contact_id = user_id_param(params["contact_id"], "contactId")
        await self._admin(scope, RemoveContact(user_id, contact_id))
        return 200, {"success": True, "userId": user_id, "contactId": contact_id}

    async def _set_privacy(
        self, scope: Scope, receive: Receive, params: dict[str, str]
    ) -> tuple[int, Any]:
        self.auth.admin(headers_of(scope))
        user_id = user_id_param(params["user_id"], "userId")
        body = codec.structure(await json_body(receive), PrivacyBody, "body")
        await self._admin(scope, SetVisibility(user_id, body.visibility))
        return 200, {"success": True, "userId": user_id, "visibility": body.visibility.value}

    async def _recent_events(self, scope: Scope, _: Receive, __: dict[str, str]) -> tuple[int, Any]:
        """The latest presence transitions of all users (operators only)."""
        self.auth.admin(headers_of(scope))
        limit = integer_param(query_of(scope), "limit", 50, most=_MAX_HISTORY)
        events = await self._read_store(self.engine.events.recent_events(limit))
        return 200, {"success": True, "events": [_event(e) for e in events]}

    async def _read_store(self, read: Awaitable[list[EventRecord]]) -> list[EventRecord]:
        try:
            return await read
        except Exception as exc:
            raise HttpError(
                503, ErrorCode.STORE_ERROR, f"the store could not be read: {exc}"
            ) from exc

    async def _stats(self, scope: Scope, _: Receive, __: dict[str, str]) -> tuple[int, Any]:
        """Every figure for callers the admin routes admit; for anyone else only what
        they could learn otherwise: the online users they may see (their
        ``get_online_count``), the uptime and the node. In ``jwt`` mode a caller
        without a valid token is refused (401) like on every ``/api`` read."""
        headers = headers_of(scope)
        if self.auth.admits_admin(headers):
            stats = await self.engine.ask(StatsQuery())
            return 200, {
                "success": True,
                "onlineUsers": stats.online_users,
                "connections": self.connections(),
                "sessions": stats.sessions,
                "knownUsers": stats.known_users,
                "uptimeSeconds": self._uptime(),
                "node": self.node,
                # Counters for the operator page's rates (not part of the protocol's list).
                "pushes": stats.pushes,
                "messagesIn": sum(self.messages_in().values()),
            }
        watcher = self.auth.http(headers, query_of(scope)).user_id
        stats = await self.engine.ask(StatsQuery(watcher, count_visible=True))
        return 200, {
            "success": True,
            "onlineUsers": stats.visible_online,
            "uptimeSeconds": self._uptime(),
            "node": self.node,
        }

    def _uptime(self) -> float:
        return round(time.monotonic() - self.started, 3)


def presence_body(views: list[UserView]) -> bytes:
    """``{"success": true, "users": [...]}`` spliced from each view's cached JSON (the
    encoding shared with the WebSocket answers); a test holds it equal to the
    generic encoding."""
    return b'{"success":true,"users":[' + b",".join(map(view_fragment, views)) + b"]}"


def _event(event: EventRecord) -> dict[str, Any]:
    return {
        "userId": event.user_id,
        "status": event.status.value,
        "at": format_timestamp(event.at),
        "reason": event.reason,
        "deviceId": event.device_id,
    }
