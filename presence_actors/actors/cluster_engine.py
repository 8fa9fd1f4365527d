"""The engine as a node of a cluster (``cluster.redis_url``): Redis instead of SQLite.

Shared facts live in Redis and nowhere else (docs/ARCHITECTURE.md, "Scale-out"):
each user's merged presence, profile, lastSeen and history, the read model
for lists and counts, and the policy. The node keeps in memory what it needs
to serve (the policy, the views of the users it shows) and opens no local
database. The registry, the user actors and the gateway are the same as on a
single node; :class:`RegistryReceiver` is how the link talks to the registry.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

import trio
from attrs import evolve

from ..cluster.link import ClusterLink
from ..cluster.policy_store import PolicyIntent
from ..cluster.wire import MergedView, Report
from ..config import Settings
from ..model import Visibility
from ..persistence.writer import WritesLost
from .clock import WallClock
from .directory import Directory
from .engine import Engine
from .messages import Merged, PolicyChanged, Rejoined, Seeded
from .policy import Policy
from .registry import Registry
from .user_state import Rules, last_alive

log = logging.getLogger("presence_actors.engine")


def node_name(settings: Settings) -> str:
    """This node's name in the cluster: ``server.node`` (unique per process), or the
    host and process id."""
    return settings.server.node or f"{socket.gethostname()}-{os.getpid()}"


class RegistryReceiver:
    """What the link needs from the engine, through the registry's inbox (and a few
    synchronous reads of registry state, which never span an await)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    async def merged(self, view: MergedView, cause: object) -> None:
        await self._registry.tell(Merged(view, cause))  # type: ignore[arg-type]

    async def seeded(self, views: list[MergedView], asked: Iterable[str] | None = ()) -> None:
        await self._registry.tell(
            Seeded(tuple(views), tuple(asked) if asked is not None else (), complete=asked is None)
        )

    async def policy_changed(self, intent: PolicyIntent) -> None:
        await self._registry.tell(PolicyChanged(intent))

    async def rejoined(self, fresh: bool) -> None:
        await self._registry.tell(Rejoined(fresh))

    def local_alive(self) -> Iterable[tuple[str, int]]:
        registry = self._registry
        for user_id, state in registry.local_states():
            alive = last_alive(state, registry.rules)
            if alive is not None and state.sessions:
                yield user_id, alive

    def local_reports(self, with_profile: bool) -> list[Report]:
        registry = self._registry
        cluster = registry.cluster
        assert cluster is not None
        states = [
            (state.shown, state.seen_alive)
            for _, state in registry.local_states()
            if state.shown is not None
        ]
        return cluster.local_reports(states, with_profile=with_profile)

    def policy_snapshot(
        self,
    ) -> tuple[dict[str, Visibility], dict[str, set[str]], dict[str, set[str]]]:
        return self._registry.policy.snapshot()


@asynccontextmanager
async def open_cluster_engine(settings: Settings, clock: WallClock) -> AsyncIterator[Engine]:
    """A node of the cluster for the duration of the block; raises
    ``ClusterUnavailable`` (one line) when Redis cannot be reached at start."""
    node = node_name(settings)
    link = ClusterLink(settings, node, clock.now_ms)
    visibility, contacts, blocks = await link.load_policy()
    policy = Policy(
        default_visibility=settings.presence.default_visibility,
        visibility=visibility,
        contacts=contacts,
        blocks=blocks,
    )
    registry = Registry(
        settings,
        evolve(Rules.from_settings(settings, clock), publish_holds=True),
        link.writer,
        directory=Directory(),
        policy=policy,
        cluster=link,
    )
    link.bind(RegistryReceiver(registry))
    log.info(
        "node %s of the cluster at %s (%s)",
        node,
        link.target.describe(),
        "Redis Cluster" if link.cluster else "one Redis",
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(registry.run)
        await nursery.start(link.run)
        engine = Engine(settings, clock, registry, link.writer, events=link)
        try:
            yield engine
        finally:
            # Sessions are closed by now; the users' shares this node held are in
            # Redis as lost sessions (the grace period applies), and leaving makes
            # the other nodes clean up after this one.
            with trio.move_on_after(settings.server.graceful_timeout, shield=True):
                await link.writer.flush()
            nursery.cancel_scope.cancel()
    if link.writer.loss:
        raise WritesLost(link.writer.loss, link.problem)
