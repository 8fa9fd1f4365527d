"""Reports to Redis in batches: one pipeline of merges per tick.

The registry hands over each user's latest report without waiting
(:meth:`Publisher.report`); the publisher task takes what is pending, runs
merge.lua for each user in one pipeline (one round trip for the lot, however
many users changed, with the changes to the set of users this node holds),
and hands every merged view back to the node. What reads use (the list order,
the stored views, the audit stream) merge.lua writes itself on a single Redis;
on a Redis Cluster it is in another slot, and the publisher writes it in a
second pipeline. A user's reports coalesce while a batch is on its way: only
the latest goes next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import trio
from attrs import define, evolve, frozen
from coredis.exceptions import NoScriptError
from coredis.tokens import PureToken

from . import keys
from .wire import MergedView, Report, decode_merged, order_score

log = logging.getLogger("presence_actors.cluster")

# Merges per pipeline: a round trip for hundreds of users, and a bounded reply.
BATCH = 256
# Events kept per user (a user's history) and in the operators' audit stream.
EVENTS_PER_USER = 1000
AUDIT_EVENTS = 10_000
# Batches start at most this often. Under load, reports gather for up to this long
# and share a pipeline: a round trip costs this client several times what one more
# command in it does (docs/PERFORMANCE.md, issue 12). A change after a quiet spell
# goes at once.
BATCH_INTERVAL = 0.01
# A merge's reply when Redis did not have the script.
_NO_SCRIPT = object()


class Fenced(Exception):
    """Redis refused this node's writes: other nodes took it for dead (its epoch is
    fenced). The node must join again under a new epoch."""


@define
class _Event:
    reason: str
    device: str


@frozen
class Merge:
    """One node entry to merge into one user (merge.lua's arguments)."""

    user_id: str
    node: str
    epoch: int
    entry: bytes | str  # b"" withdraws it, "*hold" keeps it without devices
    profile: bytes = b""
    reason: str = ""
    device: str = ""
    fence: bool = False  # the node is dead: refuse its writes from now on


class Merger:
    """Runs merges in pipelines and keeps the read model in step (both the node's
    own reports and the cleanup after a dead node go through here)."""

    def __init__(self, contacts_mode: bool, cluster: bool, now_ms: Callable[[], int]) -> None:
        self._contacts_mode = contacts_mode
        # Per-user channels are sharded in a Redis Cluster (the user's slot); the
        # everyone channel is broadcast to every node of it.
        self._publish = ("SPUBLISH" if cluster else "PUBLISH") if contacts_mode else "PUBLISH"
        # On a single Redis merge.lua writes the read model itself, in the merge's round
        # trip; a Redis Cluster keeps the read model in another slot than the user's,
        # which one script cannot reach, so the node writes it in a second pipeline.
        self._read_model_in_script = not cluster
        self._now_ms = now_ms
        self.merges = 0  # run in Redis (metrics)

    async def run(
        self,
        client: Any,
        script: Any,
        merges: list[Merge],
        first: Callable[[Any], None] | None = None,
    ) -> list[MergedView | None]:
        """Merge each (None where the node was fenced): one round trip for the merges
        (after what ``first`` puts in the same pipeline) and the read model on a
        single Redis; on a Redis Cluster a second one for the read model.

        The script is called by its digest (EVALSHA) without asking Redis first
        whether it has it: coredis's script object would ask (SCRIPT EXISTS) before
        every pipeline, a round trip of its own. A Redis that lost it (restarted,
        failed over, flushed) answers NOSCRIPT: it is loaded then, and those merges,
        and only those, run again."""
        now = self._now_ms()
        raws = await self._merge(client, script, merges, now, first)
        missing = [i for i, raw in enumerate(raws) if raw is _NO_SCRIPT]
        if missing:
            await client.script_load(script.script)
            again = await self._merge(client, script, [merges[i] for i in missing], now, None)
            for i, raw in zip(missing, again, strict=True):
                if raw is _NO_SCRIPT:
                    raise NoScriptError("Redis lost the merge script again while loading it")
                raws[i] = raw
        views: list[MergedView | None] = []
        for merge, raw in zip(merges, raws, strict=True):
            views.append(None if raw is None else decode_merged(raw, merge.user_id))
        self.merges += len(merges)
        if not self._read_model_in_script:
            await self._write_read_model(client, merges, views, now)
        return views

    async def _write_read_model(
        self, client: Any, merges: list[Merge], views: list[MergedView | None], now: int
    ) -> None:
        """The read model of merged views, where merge.lua could not write it (a Redis
        Cluster: the ``{pa}`` slot is not the user's)."""
        async with client.pipeline(transaction=False) as pipe:
            for merge, view in zip(merges, views, strict=True):
                if view is None or not view.version:
                    continue
                pipe.zadd(keys.ORDER, {merge.user_id: order_score(view.view)})
                pipe.hset(keys.VIEWS, {merge.user_id: stored(view)})
                if view.status_changed:
                    pipe.xadd(
                        keys.AUDIT,
                        {
                            "u": merge.user_id,
                            "s": view.view.status.value,
                            "r": merge.reason,
                            "d": merge.device,
                            "t": str(now),
                        },
                        trim_strategy=PureToken.MAXLEN,
                        threshold=AUDIT_EVENTS,
                        trim_operator=PureToken.APPROXIMATELY,
                    )

    async def _merge(
        self,
        client: Any,
        script: Any,
        merges: list[Merge],
        now: int,
        first: Callable[[Any], None] | None,
    ) -> list[Any]:
        """One pipeline: what ``first`` adds, then EVALSHA per merge; each merge's raw
        reply, or _NO_SCRIPT where Redis did not have the script. Any other error
        propagates."""
        replies = []
        try:
            async with client.pipeline(transaction=False) as pipe:
                if first is not None:
                    first(pipe)
                for merge in merges:
                    replies.append(
                        pipe.evalsha(script.sha, self._keys(merge.user_id), self._args(merge, now))
                    )
        except NoScriptError:
            pass  # the first error of the pipeline; each reply says whether it is its own
        raws: list[Any] = []
        for reply in replies:
            try:
                raws.append(await reply)
            except NoScriptError:
                raws.append(_NO_SCRIPT)
        return raws

    def _keys(self, user_id: str) -> list[str]:
        user_keys = [keys.entries(user_id), keys.merged(user_id), keys.events(user_id)]
        if self._read_model_in_script:
            return [*user_keys, keys.ORDER, keys.VIEWS, keys.AUDIT]
        return user_keys

    def _args(self, merge: Merge, now: int) -> list[Any]:
        channel = keys.channel(merge.user_id) if self._contacts_mode else keys.EVERYONE
        return [
            merge.user_id,
            merge.node,
            merge.epoch,
            merge.entry,
            merge.profile,
            now,
            merge.reason,
            merge.device,
            self._publish,
            channel,
            EVENTS_PER_USER,
            "1" if merge.fence else "0",
            AUDIT_EVENTS,
        ]


class Publisher:
    def __init__(
        self,
        node: str,
        merger: Merger,
        on_merged: Callable[[MergedView, object], Awaitable[None]],
    ) -> None:
        self._node = node
        self._merger = merger
        self._on_merged = on_merged
        self._pending: dict[str, Report] = {}
        self._events: dict[str, _Event] = {}
        self._held: set[str] = set()  # users this node holds an entry for in Redis
        # Users whose entry this node withdrew, still in its set of users in Redis: they
        # leave the set with the next batch's round trip (in the set meanwhile, a user
        # only costs a merge that changes nothing if this node dies).
        self._releasing: set[str] = set()
        self._profiles_in_flight: set[str] = set()
        self._wake = trio.Event()
        self.epoch = 0

    @property
    def pending(self) -> int:
        return len(self._pending)

    def report(self, report: Report) -> None:
        """Queue the user's latest report; an older one still waiting is replaced.
        Never waits. Bounded by the users this node holds sessions of."""
        waiting = self._pending.get(report.user_id)
        if report.profile is None and waiting is not None and waiting.profile is not None:
            # The later report replaces the earlier, but not the profile it carried.
            report = evolve(report, profile=waiting.profile)
        self._pending[report.user_id] = report
        self._wake.set()

    def changing_profile(self, user_id: str) -> bool:
        """A username or status message set here is on its way to Redis: what Redis
        shows of the user's profile until then is older."""
        waiting = self._pending.get(user_id)
        return (waiting is not None and waiting.profile is not None) or (
            user_id in self._profiles_in_flight
        )

    def note_event(self, user_id: str, reason: str, device: str | None) -> None:
        """Why the user's status is changing (the audit log), for its next report."""
        self._events[user_id] = _Event(reason, device or "")

    def forget_held(self) -> None:
        """Redis lost what this node held: every user is new to it again."""
        self._held = set()
        self._releasing = set()

    async def run(self, client: Any, script: Any) -> None:
        """Publish until cancelled or Redis fails (the exception propagates; what was
        taken is put back unless a newer report replaced it). Raises Fenced when the
        other nodes took this one for dead. A batch starts BATCH_INTERVAL after the
        previous one started at the earliest."""
        next_batch = -math.inf
        while True:
            if not self._pending:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            if trio.current_time() < next_batch:
                await trio.sleep_until(next_batch)
            next_batch = trio.current_time() + BATCH_INTERVAL
            users = list(self._pending)[:BATCH]
            batch = [self._pending.pop(user) for user in users]
            self._profiles_in_flight = {r.user_id for r in batch if r.profile is not None}
            try:
                await self._publish_batch(client, script, batch)
            except BaseException:
                for report in batch:
                    newer = self._pending.get(report.user_id)
                    if newer is None:
                        self._pending[report.user_id] = report
                    elif newer.profile is None and report.profile is not None:
                        self._pending[report.user_id] = evolve(newer, profile=report.profile)
                raise
            finally:
                self._profiles_in_flight = set()

    async def _publish_batch(self, client: Any, script: Any, batch: list[Report]) -> None:
        merges = []
        for report in batch:
            event = self._events.get(report.user_id) or _Event("", "")
            profile = b""
            if report.profile is not None:
                profile = orjson.dumps([*report.profile, *(report.face or report.profile)])
            merges.append(
                Merge(
                    report.user_id,
                    self._node,
                    self.epoch,
                    report.entry(self.epoch),
                    profile,
                    event.reason,
                    event.device,
                )
            )
        # A user this node starts to hold an entry for is recorded in the same round
        # trip as the entry: if the node dies, whoever cleans up after it finds it.
        # A user whose entry an earlier batch withdrew leaves the set in this round trip
        # (after that merge: its entry is gone already).
        holding = [r.user_id for r in batch if not r.withdrawn and r.user_id not in self._held]
        self._releasing.difference_update(holding)
        releasing = list(self._releasing)
        node_users = keys.node_users(self._node, self.epoch)

        def record(pipe: Any) -> None:
            if holding:
                pipe.sadd(node_users, holding)
            if releasing:
                pipe.srem(node_users, releasing)

        views = await self._merger.run(client, script, merges, record)
        if any(view is None for view in views):
            raise Fenced(f"node {self._node} at epoch {self.epoch} was taken for dead")
        self._held.update(holding)
        self._releasing.difference_update(releasing)
        released = [r.user_id for r in batch if r.withdrawn and r.user_id in self._held]
        self._held.difference_update(released)
        self._releasing.update(released)
        for report, view in zip(batch, views, strict=True):
            self._events.pop(report.user_id, None)
            assert view is not None
            await self._on_merged(view, report.cause)


def stored(view: MergedView) -> bytes:
    """A merged view as the read model keeps it (what ``decode_merged`` reads back)."""
    full, public = view.view, view.public
    return orjson.dumps(
        {
            "s": full.status.value,
            "u": full.username,
            "m": full.status_message,
            "su": public.username,
            "sm": public.status_message,
            "ls": full.last_seen,
            "d": [[d.device_id, d.device_type.value, d.status.value] for d in full.devices],
            "ver": view.version,
        }
    )
