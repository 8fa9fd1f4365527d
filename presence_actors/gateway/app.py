"""One ASGI app on one port: ``/ws``, ``/api``, health, ``/metrics`` and the page.

Every HTTP request's body is bounded here, before any route sees it: at most
:data:`.asgi.MAX_BODY` bytes, arriving within ``server.body_timeout`` and with no
silence longer than ``server.body_idle_timeout`` (:func:`.asgi.bounded_receive`).
"""

from __future__ import annotations

import logging
import re
from importlib import resources

import trio

from ..actors import Engine, StatsQuery
from ..config import Settings
from ..metrics import Metrics
from ..protocol import ErrorCode
from .asgi import (
    MAX_BODY,
    BodyLimits,
    Receive,
    Scope,
    Send,
    bounded_receive,
    headers_of,
    respond,
    respond_error,
    respond_json,
)
from .auth import Authenticator, AuthError
from .grpc_api import GrpcGateway
from .http_api import HttpApi
from .websocket import WebSocketGateway

log = logging.getLogger("presence_actors.app")

_STATIC_TYPES = {
    "html": b"text/html; charset=utf-8",
    "js": b"text/javascript; charset=utf-8",
    "css": b"text/css; charset=utf-8",
    "svg": b"image/svg+xml",
    "png": b"image/png",
}
# Files served from gateway/web: flat names only, so no path can leave that folder.
_STATIC_NAME = re.compile(r"[a-z0-9_-]+\.(?:html|js|css|svg|png)")
_PAGES = {"/": "index.html", "/ops": "ops.html"}


class PresenceApp:
    """The ASGI application; ``hypercorn`` serves it, the engine answers it."""

    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.auth = Authenticator(settings.auth)
        self.websockets = WebSocketGateway(engine, settings, self.auth, metrics)
        self.api = HttpApi(
            engine, settings, self.auth, lambda: metrics.connections, lambda: metrics.messages_in
        )
        self.grpc = GrpcGateway(engine, settings, self.auth)
        self._web = resources.files("presence_actors.gateway") / "web"
        self._body_limits = BodyLimits(
            MAX_BODY, settings.server.body_timeout, settings.server.body_idle_timeout
        )
        metrics.read_engine_with(self._engine_values)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, bounded_receive(receive, self._body_limits), send)
        elif kind == "websocket":
            if scope["path"] == "/ws":
                await self.websockets.handle(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if path.startswith("/api/"):
            await self.api.handle(scope, receive, send)
        elif path.startswith(GrpcGateway.PREFIX):
            await self.grpc.handle(scope, receive, send)
        elif path == "/healthz":
            await respond_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            writer = self.engine.writer
            ready = writer.writable
            body: dict[str, object] = {
                "status": "ready" if ready else "unavailable",
                "storeWritable": ready,
            }
            if not ready:
                body["reason"] = f"the store cannot be written: {writer.problem}"
            await respond_json(send, 200 if ready else 503, body)
        elif path == "/metrics":
            await self._metrics(scope, send)
        elif scope["method"] in ("GET", "HEAD"):
            await self._static(path, send)
        else:
            await respond_error(send, 404, ErrorCode.INVALID_MESSAGE, f"no route for {path}")

    async def _metrics(self, scope: Scope, send: Send) -> None:
        """The Prometheus text, for callers the admin routes admit (the admin token as
        a bearer: Prometheus sends it with ``authorization: {credentials: ...}``)."""
        try:
            self.auth.admin(headers_of(scope))
        except AuthError as exc:
            await respond_error(send, exc.status, exc.code, exc.message)
            return
        await respond(send, 200, self.metrics.render(), b"text/plain; version=0.0.4")

    async def _static(self, path: str, send: Send) -> None:
        name = _PAGES.get(path, path[1:])
        resource = self._web / name
        if _STATIC_NAME.fullmatch(name) is None or not resource.is_file():
            await respond_error(send, 404, ErrorCode.INVALID_MESSAGE, f"no page {path}")
            return
        await respond(
            send,
            200,
            resource.read_bytes(),
            _STATIC_TYPES[name.rsplit(".", 1)[1]],
            [(b"cache-control", b"no-cache")],
        )

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _engine_values(self) -> dict[str, float]:
        registry, writer = self.engine.registry, self.engine.writer
        stats = registry.answer(StatsQuery())  # a read of counters, at scrape time
        writer_stats = writer.statistics()
        return {
            "sessions": stats.sessions,
            "online_users": stats.online_users,
            "known_users": stats.known_users,
            "actors": stats.actors,
            "pushes": registry.stats.pushes,
            "outbox_drops": registry.stats.push_drops,
            "actor_restarts": registry.stats.actor_restarts,
            "persistence_pending": writer_stats.pending_intents,
            "persistence_commit_failures": writer_stats.commit_failures,
            "trio_tasks_living": trio.lowlevel.current_statistics().tasks_living,
            **self._cluster_values(),
        }

    def _cluster_values(self) -> dict[str, float]:
        cluster = self.engine.registry.cluster
        if cluster is None:
            return {}
        link = cluster.link
        return {
            "cluster_connected": float(link.connected),
            "cluster_published": link.merger.merges,
            "cluster_received": link.subscriber.received,
            "cluster_watched": link.subscriber.interest,
            "cluster_joins": link.joins,
        }
