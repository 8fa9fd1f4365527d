"""Changes from the other nodes, only for the users someone here watches.

In ``everyone`` fan-out every session watches every user, so a node takes
every change (one channel). In ``contacts`` fan-out a node subscribes to the
channel of each user one of its sessions follows (its own user, its contacts,
its subscriptions) and to nothing else: a change reaches only the nodes that
have a watcher of that user. Interest is counted per user; the registry says
when it starts and stops (:meth:`Subscriber.watch`, :meth:`Subscriber.unwatch`)
and the subscriber task catches up with Redis.

A newly watched user's current view is read right after subscribing, so
nothing published in between is missed (versions tell the newer apart).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson
import trio
from coredis.retry import NoRetryPolicy

from . import keys
from .wire import MergedView, decode_merged

log = logging.getLogger("presence_actors.cluster")

# Channels (un)subscribed per command, and views read per command.
_CHUNK = 500
# A silent subscription is checked with a PING this often: a blackholed link to
# Redis is noticed within this plus the command timeout.
KEEPALIVE = 2


class Subscriber:
    def __init__(
        self,
        contacts_mode: bool,
        cluster: bool,
        on_merged: Callable[[MergedView, object], Awaitable[None]],
        on_seeded: Callable[[list[MergedView], list[str] | None], Awaitable[None]],
        node: str = "",
    ) -> None:
        self._node = node
        self._contacts_mode = contacts_mode
        self._cluster = cluster
        self._on_merged = on_merged
        self._on_seeded = on_seeded
        self._interest: Counter[str] = Counter()
        self._subscribed: set[str] = set()
        self._changed = trio.Event()
        # This node's own changes come back on the channels it follows; merge.lua
        # writes the origin as ``,"o":<JSON string>,`` (quotes inside a string value
        # are escaped, so no value can contain this). Found in the bytes, an echo is
        # dropped without being decoded. A name JSON writes differently (cjson
        # escapes "/") is not found, and its echoes are dropped after decoding.
        self._echo = b',"o":' + orjson.dumps(node) + b","
        self.received = 0  # changes taken from pub/sub made by other nodes (metrics)
        self.echoes = 0  # this node's own changes coming back

    @property
    def interest(self) -> int:
        return len(self._interest)

    def watch(self, user_ids: Iterable[str]) -> None:
        """Sessions here follow these users (once more each). Never waits."""
        for user_id in user_ids:
            self._interest[user_id] += 1
        self._changed.set()

    def unwatch(self, user_ids: Iterable[str]) -> None:
        for user_id in user_ids:
            left = self._interest[user_id] - 1
            if left > 0:
                self._interest[user_id] = left
            else:
                del self._interest[user_id]
        self._changed.set()

    async def run(self, client: Any, *, task_status: trio.TaskStatus[None]) -> None:
        """Subscribe, read what is watched (a full resync after a reconnect) and pass
        every change on, until cancelled or Redis fails."""
        try:
            await self._run(client, task_status)
        except BaseException:
            if trio.current_effective_deadline() == -math.inf:
                # Cancelled: coredis's unsubscribe on the way out may fail on a
                # connection already closed; nothing is left to clean up.
                return
            raise

    async def _run(self, client: Any, task_status: trio.TaskStatus[None]) -> None:
        self._subscribed = set()
        # No retries inside coredis: a lost connection ends this task and the link
        # joins again and resyncs (messages published meanwhile are gone).
        options: dict[str, Any] = {
            "ignore_subscribe_messages": True,
            "retry_policy": NoRetryPolicy(),
            "max_idle_seconds": KEEPALIVE,
        }
        if self._contacts_mode:
            open_pubsub = client.sharded_pubsub if self._cluster else client.pubsub
            pubsub = open_pubsub(**options)
        else:
            pubsub = client.pubsub(channels=[keys.EVERYONE], **options)
        async with pubsub, trio.open_nursery() as nursery:
            if self._contacts_mode:
                await self._catch_up(client, pubsub)
                nursery.start_soon(self._follow_interest, client, pubsub)
            else:
                await self._seed_everyone(client)
            task_status.started()
            # Not ``async for``: coredis ends that iteration while nothing is
            # subscribed, which in contacts fan-out is where a node starts.
            while True:
                message = await pubsub.get_message()
                if message is None or message["type"] not in ("message", "smessage"):
                    continue
                data = message["data"]
                # This node's own changes come back with their merge's reply, which
                # knows the session that caused them.
                if self._echo in data:
                    self.echoes += 1
                    continue
                merged = decode_merged(data)
                if merged.origin == self._node:
                    self.echoes += 1
                    continue
                self.received += 1
                await self._on_merged(merged, None)

    async def _follow_interest(self, client: Any, pubsub: Any) -> None:
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            await self._catch_up(client, pubsub)

    async def _catch_up(self, client: Any, pubsub: Any) -> None:
        wanted = set(self._interest)
        new = sorted(wanted - self._subscribed)
        gone = sorted(self._subscribed - wanted)
        for start in range(0, len(new), _CHUNK):
            chunk = new[start : start + _CHUNK]
            await pubsub.subscribe(*(keys.channel(u) for u in chunk))
            self._subscribed.update(chunk)
            await self._seed(client, chunk)
        for start in range(0, len(gone), _CHUNK):
            chunk = gone[start : start + _CHUNK]
            await pubsub.unsubscribe(*(keys.channel(u) for u in chunk))
            self._subscribed.difference_update(chunk)

    async def _seed(self, client: Any, user_ids: list[str]) -> None:
        stored = await client.hmget(keys.VIEWS, user_ids)
        views = [
            decode_merged(raw, user_id)
            for user_id, raw in zip(user_ids, stored, strict=True)
            if raw is not None
        ]
        await self._on_seeded(views, user_ids)

    async def _seed_everyone(self, client: Any) -> None:
        """Every user's view (``everyone`` fan-out: this node shows them all); then
        ``on_seeded([], None)``: users Redis no longer knows are not shown online."""
        cursor: int | None = 0
        while cursor is not None:
            cursor, found = await client.hscan(keys.VIEWS, cursor=cursor, count=_CHUNK)
            views = [decode_merged(raw, user.decode()) for user, raw in found.items()]
            if views:
                await self._on_seeded(views, [view.user_id for view in views])
            cursor = cursor or None
        await self._on_seeded([], None)
