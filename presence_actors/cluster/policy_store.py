"""Visibility, contacts and blocks in Redis: the cluster's one source of them.

Every node keeps the whole policy in memory (the fan-out and every read check
it) and follows a log of changes (a capped stream): a change made through any
node is written to the user's keys, then logged; every node applies it when it
reads the log, within a second (the log is read with a one-second block).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import orjson
from coredis.tokens import PureToken

from ..model import Visibility
from ..persistence.intents import (
    BlockAdded,
    BlockRemoved,
    ContactAdded,
    ContactRemoved,
    ContactsReplaced,
    VisibilityRow,
)
from . import keys

PolicyIntent = (
    ContactsReplaced | ContactAdded | ContactRemoved | BlockAdded | BlockRemoved | VisibilityRow
)
POLICY_INTENTS = (
    ContactsReplaced,
    ContactAdded,
    ContactRemoved,
    BlockAdded,
    BlockRemoved,
    VisibilityRow,
)
# Changes kept in the log: a node away for longer reloads the whole policy.
LOG_LENGTH = 100_000
# How long the follower blocks on the log at a time (ms): a change is in force
# on every node within about this much.
FOLLOW_BLOCK_MS = 500
_CHUNK = 500


def encode(intent: PolicyIntent, origin: str) -> dict[str, str]:
    match intent:
        case VisibilityRow(user_id, visibility, _):
            return {"k": "vis", "u": user_id, "o": visibility.value, "n": origin}
        case ContactsReplaced(user_id, contacts):
            return {
                "k": "replace",
                "u": user_id,
                "o": orjson.dumps(sorted(contacts)).decode(),
                "n": origin,
            }
        case ContactAdded(user_id, contact_id):
            return {"k": "contact+", "u": user_id, "o": contact_id, "n": origin}
        case ContactRemoved(user_id, contact_id):
            return {"k": "contact-", "u": user_id, "o": contact_id, "n": origin}
        case BlockAdded(user_id, blocked_id):
            return {"k": "block+", "u": user_id, "o": blocked_id, "n": origin}
        case BlockRemoved(user_id, blocked_id):
            return {"k": "block-", "u": user_id, "o": blocked_id, "n": origin}
    raise AssertionError(intent)


def decode(fields: dict[bytes, bytes]) -> tuple[PolicyIntent, str]:
    kind, user, other = (fields[k].decode() for k in (b"k", b"u", b"o"))
    origin = fields.get(b"n", b"").decode()
    intent: PolicyIntent
    match kind:
        case "vis":
            intent = VisibilityRow(user, Visibility(other), 0)
        case "replace":
            intent = ContactsReplaced(user, frozenset(orjson.loads(other)))
        case "contact+":
            intent = ContactAdded(user, other)
        case "contact-":
            intent = ContactRemoved(user, other)
        case "block+":
            intent = BlockAdded(user, other)
        case "block-":
            intent = BlockRemoved(user, other)
        case _:
            raise ValueError(f"unknown policy change {kind!r}")
    return intent, origin


async def write(client: Any, intent: PolicyIntent, origin: str) -> None:
    """Make the change in the users' keys, then log it (idempotent: a retry after a
    failure half-way writes the same)."""
    match intent:
        case VisibilityRow(user_id, visibility, _):
            await client.hset(keys.policy(user_id), {"vis": visibility.value})
            users = [user_id]
        case ContactsReplaced(user_id, contacts):
            old = {c.decode() for c in await client.smembers(keys.contacts(user_id))}
            for gone in old - contacts:
                await client.srem(keys.contacts(user_id), [gone])
                await client.srem(keys.contacts(gone), [user_id])
            for new in contacts - old - {user_id}:
                await client.sadd(keys.contacts(user_id), [new])
                await client.sadd(keys.contacts(new), [user_id])
            users = [user_id, *contacts]
        case ContactAdded(user_id, contact_id):
            if user_id != contact_id:
                await client.sadd(keys.contacts(user_id), [contact_id])
                await client.sadd(keys.contacts(contact_id), [user_id])
            users = [user_id, contact_id]
        case ContactRemoved(user_id, contact_id):
            await client.srem(keys.contacts(user_id), [contact_id])
            await client.srem(keys.contacts(contact_id), [user_id])
            users = [user_id, contact_id]
        case BlockAdded(user_id, blocked_id):
            await client.sadd(keys.blocks(user_id), [blocked_id])
            users = [user_id]
        case BlockRemoved(user_id, blocked_id):
            await client.srem(keys.blocks(user_id), [blocked_id])
            users = [user_id]
    await client.sadd(keys.POLICY_USERS, users)
    await client.xadd(
        keys.POLICY_LOG,
        encode(intent, origin),
        trim_strategy=PureToken.MAXLEN,
        threshold=LOG_LENGTH,
        trim_operator=PureToken.APPROXIMATELY,
    )


async def load(
    client: Any,
) -> tuple[dict[str, Visibility], dict[str, set[str]], dict[str, set[str]], bytes]:
    """The whole policy (visibility, contacts, blocks) and the log position it is at."""
    last = await client.xrevrange(keys.POLICY_LOG, end="+", start="-", count=1)
    position = last[0].identifier if last else b"0-0"
    users = sorted(u.decode() for u in await client.smembers(keys.POLICY_USERS))
    visibility: dict[str, Visibility] = {}
    contacts: dict[str, set[str]] = {}
    blocks: dict[str, set[str]] = {}
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        async with client.pipeline(transaction=False) as pipe:
            answers = [
                (
                    pipe.hget(keys.policy(u), "vis"),
                    pipe.smembers(keys.contacts(u)),
                    pipe.smembers(keys.blocks(u)),
                )
                for u in chunk
            ]
        for user, (vis, mine, blocked) in zip(chunk, answers, strict=True):
            chosen = await vis
            if chosen is not None:
                visibility[user] = Visibility(chosen.decode())
            if found := {c.decode() for c in await mine}:
                contacts[user] = found
            if found := {b.decode() for b in await blocked}:
                blocks[user] = found
    return visibility, contacts, blocks, position


async def write_back(
    client: Any,
    visibility: Mapping[str, Visibility],
    contacts: Mapping[str, Iterable[str]],
    blocks: Mapping[str, Iterable[str]],
) -> None:
    """Write a node's copy of the whole policy into a Redis that lost it."""
    async with client.pipeline(transaction=False) as pipe:
        for user, chosen in visibility.items():
            pipe.hset(keys.policy(user), {"vis": chosen.value})
        for user, mine in contacts.items():
            if mine := list(mine):
                pipe.sadd(keys.contacts(user), mine)
        for user, blocked in blocks.items():
            if blocked := list(blocked):
                pipe.sadd(keys.blocks(user), blocked)
        users = set(visibility) | set(contacts) | set(blocks)
        if users:
            pipe.sadd(keys.POLICY_USERS, sorted(users))


async def follow(
    client: Any,
    position: bytes,
    origin: str,
    apply: Callable[[PolicyIntent], Awaitable[None]],
    moved: Callable[[bytes], None],
) -> None:
    """Apply every change logged after ``position`` by another node, until cancelled
    or Redis fails; ``moved`` is told each position applied."""
    while True:
        found = await client.xread({keys.POLICY_LOG: position}, count=100, block=FOLLOW_BLOCK_MS)
        for entry in (found or {}).get(keys.POLICY_LOG.encode(), ()):
            intent, by = decode(entry.field_values)
            if by != origin:
                await apply(intent)
            position = entry.identifier
            moved(position)
