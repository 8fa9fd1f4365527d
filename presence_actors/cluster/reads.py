"""Reads of the cluster's read model: views, the ordered list, counts, histories.

The merge keeps each user's merged view in its own slot, and a copy in one hash
of every user's view and one sorted set in list order (the ``{pa}`` slot), so a
bulk read is one command however many users it names, and a page of
``get_all_users`` is two. On a single Redis merge.lua writes the copy itself; on
a Redis Cluster (another slot) the node that ran the merge writes it after.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from coredis.tokens import PureToken

from ..model import Status
from ..persistence.queries import EventRecord
from . import keys
from .wire import MergedView, decode_merged

# Candidates fetched per step of a filtered page walk.
_STEP = 500
# Clock difference between nodes and Redis tolerated when reading history by time.
_SKEW_MS = 60_000
# The highest score of a user not offline (wire.order_score: rank 0).
_ONLINE_MAX = float((1 << 44) - 1)


async def views(client: Any, user_ids: list[str]) -> dict[str, MergedView]:
    """The stored views of the users that have one."""
    if not user_ids:
        return {}
    found: dict[str, MergedView] = {}
    for start in range(0, len(user_ids), _STEP):
        chunk = user_ids[start : start + _STEP]
        stored = await client.hmget(keys.VIEWS, chunk)
        for user_id, raw in zip(chunk, stored, strict=True):
            if raw is not None:
                found[user_id] = decode_merged(raw, user_id)
    return found


async def online_count(client: Any) -> int:
    return int(await client.zcount(keys.ORDER, float("-inf"), _ONLINE_MAX))


async def known_count(client: Any) -> int:
    return int(await client.zcard(keys.ORDER))


async def page(
    client: Any,
    after: tuple[float, str] | None,
    limit: int,
    accept: Callable[[MergedView], bool],
) -> tuple[list[MergedView], tuple[float, str] | None]:
    """Up to ``limit`` accepted views in list order after ``after`` (a score and a
    user id, the keyset cursor), and where the page ended (None at the end)."""
    found: list[MergedView] = []
    low = "-inf" if after is None else after[0]
    skip_through = None if after is None else after
    last: tuple[float, str] | None = None
    offset = 0
    while len(found) < limit:
        scored = await client.zrange(
            keys.ORDER,
            low,
            "+inf",
            sortby=PureToken.BYSCORE,
            offset=offset,
            count=_STEP,
            withscores=True,
        )
        if not scored:
            return found, None
        offset += len(scored)
        candidates = []
        for member, score in scored:
            user = member.decode()
            if skip_through is not None and (score, user) <= skip_through:
                continue
            candidates.append((user, score))
        stored = await views(client, [user for user, _ in candidates])
        for user, score in candidates:
            view = stored.get(user)
            last = (score, user)
            if view is not None and accept(view):
                found.append(view)
                if len(found) == limit:
                    return found, last
        if len(scored) < _STEP:
            return found, None
    return found, last


async def history(
    client: Any, user_id: str, since_ms: int, until_ms: int | None, limit: int
) -> list[EventRecord]:
    """The user's transitions with ``since_ms <= at < until_ms``, oldest first.

    Stream ids are Redis's clock, events carry the node's (``t``): the range is
    read with a margin for clock skew and cut by the event times.
    """
    low = str(max(0, since_ms - _SKEW_MS))
    high = "+" if until_ms is None else str(until_ms + _SKEW_MS)
    records = []
    for entry in await client.xrange(keys.events(user_id), low, high):
        record = _event(user_id, entry.field_values)
        if record.at >= since_ms and (until_ms is None or record.at < until_ms):
            records.append(record)
            if len(records) == limit:
                break
    return records


async def recent_events(client: Any, limit: int) -> list[EventRecord]:
    """The latest transitions of all users, newest first."""
    entries = await client.xrevrange(keys.AUDIT, end="+", start="-", count=limit)
    return [_event(entry.field_values[b"u"].decode(), entry.field_values) for entry in entries]


def _event(user_id: str, fields: dict[bytes, bytes]) -> EventRecord:
    device = fields.get(b"d", b"").decode() or None
    return EventRecord(
        user_id=user_id,
        status=Status(fields[b"s"].decode()),
        at=int(fields[b"t"]),
        reason=fields.get(b"r", b"").decode(),
        device_id=device,
    )
