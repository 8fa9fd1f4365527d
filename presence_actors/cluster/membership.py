"""Nodes joining, staying alive, and being cleaned up after.

A node joins under a new *epoch* (a counter in Redis), keeps a liveness key
with a TTL of ``cluster.node_ttl`` alive, and every second writes when it last
heard from each of its users (so that if it dies, their lastSeen is their last
heartbeat, not the moment it died). Every node also looks out for the others:
a node whose liveness key is gone is dead (killed, partitioned, or stopped).
One live node takes the cleanup (a lock with a TTL): the dead node's sessions
count as lost at once (its devices go; a user with no session left anywhere is
held through the grace period, exactly as when a connection drops), its
writes are fenced from then on (a partitioned node that comes back cannot
undo the cleanup with stale reports), and after the grace period its entries
are withdrawn: users with no session on another node go offline.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import trio
from coredis.tokens import PureToken

from . import keys
from .publisher import Merge, Merger
from .wire import MergedView

log = logging.getLogger("presence_actors.cluster")

# How often liveness, heartbeat stamps and the others' liveness are looked at.
BEAT = 1.0
# Users cleaned up per pipeline.
_CHUNK = 256


class Membership:
    def __init__(
        self,
        node: str,
        node_ttl: float,
        grace_period: float,
        now_ms: Callable[[], int],
        local_alive: Callable[[], Iterable[tuple[str, int]]],
        on_merged: Callable[[MergedView, object], Awaitable[None]],
        merger: Merger,
        script: Any,
    ) -> None:
        self.node = node
        self._ttl = node_ttl
        self._grace = grace_period
        self._now_ms = now_ms
        self._local_alive = local_alive
        self._on_merged = on_merged
        self._merger = merger
        self._script = script
        self._stamped: dict[str, int] = {}
        self._others: dict[str, int] = {}  # the other nodes registered, as last read
        self._reaping: set[str] = set()  # nodes this one is cleaning up after now
        self.epoch = 0
        self._predecessor = 0  # an earlier run's epoch under this name, to clean up
        self.generation: bytes | None = None
        self.nodes_reaped = 0

    async def join(self, client: Any) -> bool:
        """Register under a new epoch; True when Redis had lost its data (no generation
        marker), so shared facts must be written again."""
        generation = await client.get(keys.GENERATION)
        fresh = generation is None
        if fresh:
            await client.set(keys.GENERATION, str(self._now_ms()), condition=PureToken.NX)
            generation = await client.get(keys.GENERATION)
        self.generation = generation
        previous = self.epoch
        self.epoch = int(await client.incr(f"{keys.NODES}:epoch"))
        if previous:
            # This node reports all its users again under the new epoch.
            await client.delete([keys.node_users(self.node, previous)])
        registered = await client.hget(keys.NODES, self.node)
        if registered is not None and int(registered) not in (previous, self.epoch):
            # A process that ran under this name before, and whose liveness this
            # node now renews: nobody else would ever take it for dead.
            self._predecessor = int(registered)
            log.warning(
                "node name %s was registered by an earlier run (epoch %s) that this one "
                "replaces: its sessions are lost (a second live process under this name "
                "would fight this one: give each a distinct server.node)",
                self.node,
                registered.decode(),
            )
        await client.hset(keys.NODES, {self.node: str(self.epoch)})
        await self._renew(client)
        self._stamped = {}
        return fresh

    def set_script(self, script: Any) -> None:
        """The merge script registered on the current client (it changes on a rejoin)."""
        self._script = script

    async def beat(self, client: Any, *, task_status: trio.TaskStatus[None]) -> None:
        """Renew liveness, write heartbeat stamps, look out for dead nodes; until
        cancelled or Redis fails. Raises LostData if Redis lost its data meanwhile."""
        async with trio.open_nursery() as nursery:
            if self._predecessor:
                nursery.start_soon(self._take_over, client, self._predecessor)
            task_status.started()
            while True:
                await trio.sleep(BEAT)
                await self._beat_once(client, nursery)

    async def _beat_once(self, client: Any, nursery: trio.Nursery) -> None:
        """One round trip a beat (each costs a node far more CPU than a command in it):
        the generation marker, liveness, the first heartbeat stamps, the registered
        nodes, and the liveness of the others as registered at the previous beat (one
        registered since is looked at on the next). The marker is judged before
        anything read with it is acted on."""
        changed = self._stamps_due()
        names = sorted(self._others)
        async with client.pipeline(transaction=False) as pipe:
            generation = pipe.get(keys.GENERATION)
            pipe.set(keys.alive(self.node), str(self.epoch), px=int(self._ttl * 1000))
            self._put_stamps(pipe, changed[:_CHUNK])
            registered = pipe.hgetall(keys.NODES)
            alive = [pipe.exists([keys.alive(name)]) for name in names]
        if await generation != self.generation:
            raise LostData("Redis lost its data (no generation marker)")
        await self._stamp(client, changed[_CHUNK:])
        looked_at = dict(self._others)
        nodes = await registered
        self._others = {n.decode(): int(e) for n, e in nodes.items() if n.decode() != self.node}
        for name, exists in zip(names, alive, strict=True):
            # Unless it left and registered again (a new epoch) since the last beat.
            if await exists or self._others.get(name) != looked_at[name]:
                continue
            if name not in self._reaping:
                # Beside the beats: a cleanup waits a grace period, and this node
                # must go on renewing its own liveness meanwhile, or the others
                # would take it for dead too.
                self._reaping.add(name)
                nursery.start_soon(self._reap_if_first, client, name, looked_at[name])

    async def _take_over(self, client: Any, epoch: int) -> None:
        """Clean up after this node's own predecessor (see :meth:`join`), unless
        another node already is. Merges under a fence leave alone the entries this
        epoch wrote meanwhile. Interrupted (Redis away), it starts over on the next
        join: the lock it holds is its own."""
        lease = int((self._grace + self._ttl + 30) * 1000)
        lock = keys.reaping(self.node)
        taken = await client.set(lock, self.node, condition=PureToken.NX, px=lease)
        if taken or await client.get(lock) == self.node.encode():
            self.nodes_reaped += 1
            await self._reap(client, self.node, epoch)
        self._predecessor = 0

    async def _renew(self, client: Any) -> None:
        await client.set(keys.alive(self.node), str(self.epoch), px=int(self._ttl * 1000))

    def _stamps_due(self) -> list[tuple[str, int]]:
        """When this node last heard from each user (a visible session), where it
        changed since the last stamp written."""
        return [
            (user_id, alive)
            for user_id, alive in self._local_alive()
            if self._stamped.get(user_id) != alive
        ]

    def _put_stamps(self, pipe: Any, stamps: list[tuple[str, int]]) -> None:
        for user_id, alive in stamps:
            pipe.hset(keys.entries(user_id), {f"v:{self.node}": str(alive)})
        # Taken as written: if the pipeline fails, the link joins again and stamps anew.
        for user_id, alive in stamps:
            self._stamped[user_id] = alive

    async def _stamp(self, client: Any, stamps: list[tuple[str, int]]) -> None:
        """Write stamps in pipelines of _CHUNK, letting others run in between."""
        for start in range(0, len(stamps), _CHUNK):
            async with client.pipeline(transaction=False) as pipe:
                self._put_stamps(pipe, stamps[start : start + _CHUNK])
            await trio.lowlevel.checkpoint()

    async def leave(self, client: Any) -> None:
        """A clean stop: drop liveness now, so the others clean up without waiting."""
        await client.delete([keys.alive(self.node)])

    async def _reap_if_first(self, client: Any, name: str, epoch: int) -> None:
        """The node stopped renewing its liveness: clean up after it unless another
        node already is."""
        try:
            lease = int((self._grace + self._ttl + 30) * 1000)
            if await client.set(keys.reaping(name), self.node, condition=PureToken.NX, px=lease):
                log.warning("node %s stopped renewing its liveness; its sessions are lost", name)
                self.nodes_reaped += 1
                await self._reap(client, name, epoch)
        finally:
            self._reaping.discard(name)

    async def _reap(self, client: Any, node: str, epoch: int) -> None:
        """Clean up after a dead node (see the module docstring). Idempotent: if this
        node dies half-way, the lock expires and another one does it again."""
        users = [u.decode() for u in await client.smembers(keys.node_users(node, epoch))]
        await self._rewrite(client, node, epoch, users, "*hold", "disconnect")
        await trio.sleep(self._grace)
        await self._rewrite(client, node, epoch, users, "", "disconnect")
        await client.delete([keys.node_users(node, epoch), keys.reaping(node)])
        # Unless the node came back meanwhile (the same name, a new epoch).
        if await client.hget(keys.NODES, node) == str(epoch).encode():
            await client.hdel(keys.NODES, [node])
        log.info("cleaned up after node %s (%d users)", node, len(users))

    async def _rewrite(
        self, client: Any, node: str, epoch: int, users: list[str], entry: str, reason: str
    ) -> None:
        for start in range(0, len(users), _CHUNK):
            chunk = users[start : start + _CHUNK]
            merges = [Merge(u, node, epoch, entry, reason=reason, fence=True) for u in chunk]
            for view in await self._merger.run(client, self._script, merges):
                if view is not None:
                    await self._on_merged(view, None)


class LostData(Exception):
    """Redis came back without the cluster's data; the node joins again and writes
    back what it knows."""
