"""ClusterLink: this node's one connection to the cluster, and what runs over it.

Over one Redis client (a server, or a Redis Cluster) the link runs: the
publisher (this node's reports, merged in batches), the subscriber (changes
of watched users from the other nodes), membership (liveness, heartbeat
stamps, cleaning up after dead nodes), the policy log follower and the policy
writer. Any Redis failure ends them all; the link then serves nothing new
from Redis (the node goes on with its local presence, ``/readyz`` says why),
tries again with backoff, and on return joins again: a new epoch, every local
user reported again, subscriptions and watched views read again (watchers are
pushed whatever changed meanwhile), and, if Redis lost its data, the node's
copy of the policy written back.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol, TypeVar

import trio

from ..config import Settings
from ..model import Visibility
from ..persistence.queries import EventRecord
from . import policy_store, reads
from .client import MERGE_SCRIPT, RedisTarget, is_cluster, make_client
from .membership import LostData, Membership
from .policy_store import PolicyIntent
from .publisher import Fenced, Merger, Publisher
from .subscriber import Subscriber
from .wire import MergedView, Report
from .writer import ClusterWriter

log = logging.getLogger("presence_actors.cluster")
T = TypeVar("T")

# Waiting for Redis at start before the server gives up (one clear line).
START_TIMEOUT = 10.0
# Retrying a lost Redis: first soon, then every few seconds.
RETRY_FIRST, RETRY_MOST = 0.2, 3.0


class ClusterUnavailable(Exception):
    """Redis could not be reached when the node started."""


class Receiver(Protocol):
    """What the link needs from the node's engine (the registry, in practice)."""

    async def merged(self, view: MergedView, cause: object) -> None: ...

    async def seeded(self, views: list[MergedView], asked: Iterable[str] | None) -> None: ...

    async def policy_changed(self, intent: PolicyIntent) -> None: ...

    async def rejoined(self, fresh: bool) -> None: ...

    def local_alive(self) -> Iterable[tuple[str, int]]: ...

    def local_reports(self, with_profile: bool) -> list[Report]: ...

    def policy_snapshot(
        self,
    ) -> tuple[dict[str, Visibility], dict[str, set[str]], dict[str, set[str]]]: ...


def _failures() -> tuple[type[BaseException], ...]:
    import coredis.exceptions

    return (coredis.exceptions.RedisError, OSError, TimeoutError, Fenced, LostData)


def describe(exc: BaseException) -> str:
    """The first real error inside (groups wrap it)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__


def is_failure(exc: BaseException) -> bool:
    """Redis failed (also when coredis's and our task groups wrap it in groups)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_failure(inner) for inner in exc.exceptions)
    return isinstance(exc, _failures())


class ClusterLink:
    def __init__(self, settings: Settings, node: str, now_ms: Any) -> None:
        self.target = RedisTarget.parse(settings.cluster.redis_url)
        self.node = node
        self._settings = settings
        self._now_ms = now_ms
        self._contacts_mode = settings.presence.fanout == "contacts"
        self._receiver: Receiver | None = None
        self.cluster = False
        self.connected = False
        self.problem: str | None = "not connected to Redis yet"
        self.merger = Merger(self._contacts_mode, False, now_ms)
        self.publisher = Publisher(node, self.merger, self._merged)
        self.subscriber = Subscriber(self._contacts_mode, False, self._merged, self._seeded, node)
        self.writer = ClusterWriter(self)
        self._policy_position = b"0-0"
        self._client: Any = None
        self.joins = 0

    # --- start ----------------------------------------------------------------------

    async def load_policy(
        self,
    ) -> tuple[dict[str, Visibility], dict[str, set[str]], dict[str, set[str]]]:
        """Reach Redis (within START_TIMEOUT) and read the whole policy; raises
        ClusterUnavailable with one line saying where and why."""
        problem: BaseException | None = None
        with trio.move_on_after(START_TIMEOUT) as waited:
            while True:
                try:
                    self.cluster = await is_cluster(self.target)
                    async with make_client(self.target, self.cluster) as client:
                        visibility, contacts, blocks, position = await policy_store.load(client)
                    break
                except BaseException as exc:
                    if not is_failure(exc):
                        raise
                    problem = exc
                    await trio.sleep(RETRY_FIRST)
        if waited.cancelled_caught:
            reason = describe(problem) if problem is not None else "no answer"
            raise ClusterUnavailable(
                f"cannot reach Redis at {self.target.describe()} (cluster.redis_url): {reason}"
            )
        self._policy_position = position
        self.merger = Merger(self._contacts_mode, self.cluster, self._now_ms)
        self.publisher = Publisher(self.node, self.merger, self._merged)
        self.subscriber = Subscriber(
            self._contacts_mode, self.cluster, self._merged, self._seeded, self.node
        )
        return visibility, contacts, blocks

    def bind(self, receiver: Receiver) -> None:
        self._receiver = receiver

    # --- what the engine calls ------------------------------------------------------

    def report(self, report: Report) -> None:
        self.publisher.report(report)

    def watch(self, user_ids: Iterable[str]) -> None:
        self.subscriber.watch(user_ids)

    def unwatch(self, user_ids: Iterable[str]) -> None:
        self.subscriber.unwatch(user_ids)

    # Reads of the read model (reads.py); a failure is a ConnectionError naming it.

    async def views(self, user_ids: list[str]) -> dict[str, MergedView]:
        return await self._reading(reads.views, user_ids)

    async def online_count(self) -> int:
        return await self._reading(reads.online_count)

    async def known_count(self) -> int:
        return await self._reading(reads.known_count)

    async def page(
        self,
        after: tuple[float, str] | None,
        limit: int,
        accept: Callable[[MergedView], bool],
    ) -> tuple[list[MergedView], tuple[float, str] | None]:
        return await self._reading(reads.page, after, limit, accept)

    async def history(
        self, user_id: str, since_ms: int, until_ms: int | None, limit: int
    ) -> list[EventRecord]:
        return await self._reading(reads.history, user_id, since_ms, until_ms, limit)

    async def recent_events(self, limit: int) -> list[EventRecord]:
        return await self._reading(reads.recent_events, limit)

    async def _reading(self, read: Callable[..., Awaitable[T]], *args: Any) -> T:
        client = self._client
        if client is None or not self.connected:
            raise ConnectionError(self.problem or "Redis is unreachable")
        try:
            return await read(client, *args)
        except BaseException as exc:
            if not is_failure(exc):
                raise
            raise ConnectionError(f"Redis at {self.target.describe()}: {exc}") from None

    # --- running --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the node in the cluster until cancelled (see the module docstring).
        Ready once joined the first time."""
        assert self._receiver is not None, "bind() the engine first"
        receiver = self._receiver
        delay = RETRY_FIRST
        first = True
        quiet_until = -math.inf
        membership = Membership(
            self.node,
            self._settings.cluster.node_ttl,
            self._settings.presence.grace_period,
            self._now_ms,
            receiver.local_alive,
            self._merged,
            self.merger,
            None,
        )
        try:
            while True:
                try:
                    async with make_client(self.target, self.cluster) as client:
                        script = client.register_script(MERGE_SCRIPT)
                        membership.set_script(script)
                        fresh = await membership.join(client)
                        self.publisher.epoch = membership.epoch
                        if not first:
                            await self._rejoin(client, receiver, fresh)
                        self._client = client
                        self.connected, self.problem = True, None
                        self.joins += 1
                        delay = RETRY_FIRST
                        if not first:
                            log.warning("Redis at %s is back; rejoined", self.target.describe())
                        async with trio.open_nursery() as nursery:
                            await nursery.start(self.subscriber.run, client)
                            nursery.start_soon(self.publisher.run, client, script)
                            await nursery.start(membership.beat, client)
                            nursery.start_soon(self._follow_policy, client, receiver)
                            nursery.start_soon(self.writer.write_policy, client, self.node)
                            if first:
                                first = False
                                task_status.started()
                except BaseException as exc:
                    if not is_failure(exc):
                        raise
                    was_connected = self.connected
                    self.connected, self._client = False, None
                    self.problem = (
                        f"Redis at {self.target.describe()} is unreachable: {describe(exc)}"
                    )
                    now = trio.current_time()
                    if was_connected or now >= quiet_until:
                        # Once when it goes, then once a minute while it stays away.
                        log.warning("%s; serving local presence, retrying", self.problem)
                        quiet_until = now + 60
                    if first:
                        first = False
                        task_status.started()
                    await trio.sleep(delay)
                    delay = min(delay * 2, RETRY_MOST)
        finally:
            self.connected, self._client = False, None
            self.writer.stop()
            with trio.move_on_after(1, shield=True):
                try:
                    async with make_client(self.target, self.cluster) as client:
                        await membership.leave(client)
                except BaseException as exc:
                    if not is_failure(exc):
                        raise

    async def _rejoin(self, client: Any, receiver: Receiver, fresh: bool) -> None:
        """After an outage: tell the engine, write back the policy if Redis lost it,
        and report every local user again."""
        await receiver.rejoined(fresh)
        self.publisher.forget_held()
        if fresh:
            log.warning("Redis lost the cluster's data: writing back this node's copy")
            await policy_store.write_back(client, *receiver.policy_snapshot())
            self._policy_position = b"0-0"
        for report in receiver.local_reports(with_profile=fresh):
            self.publisher.report(report)

    async def _follow_policy(self, client: Any, receiver: Receiver) -> None:
        def moved(position: bytes) -> None:
            self._policy_position = position

        await policy_store.follow(
            client, self._policy_position, self.node, receiver.policy_changed, moved
        )

    async def _merged(self, view: MergedView, cause: object) -> None:
        assert self._receiver is not None
        await self._receiver.merged(view, cause)

    async def _seeded(self, views: list[MergedView], asked: list[str] | None) -> None:
        assert self._receiver is not None
        await self._receiver.seeded(views, asked)
