"""Connecting to the cluster's Redis: one server, or a Redis Cluster (found by asking).

coredis runs on trio through anyio. Commands get short timeouts and no
automatic retries: the link decides what to do when Redis is away (serve
from memory, say so on /readyz, reconcile when it is back), and a stopped
or frozen Redis must not hold anything for long.
"""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import urlsplit

import coredis
from attrs import frozen
from coredis.connection import TCPLocation
from coredis.retry import NoRetryPolicy

# A command that takes longer than this is taken for a lost connection (Redis
# answers in well under a millisecond on a LAN; a frozen one never does).
COMMAND_TIMEOUT = 2.0
CONNECT_TIMEOUT = 1.0

MERGE_SCRIPT = (resources.files("presence_actors.cluster") / "merge.lua").read_text()


class RedisUnavailable(Exception):
    """Redis could not be reached or did not answer in time; the message says which."""


@frozen
class RedisTarget:
    """Where Redis is: one or more seed addresses (``cluster.redis_url``)."""

    locations: tuple[tuple[str, int], ...]
    password: str | None = None
    db: int = 0

    @classmethod
    def parse(cls, url: str) -> RedisTarget:
        """``redis://host:port[/db]``, or several separated by commas (cluster seeds).
        Raises ValueError naming what is wrong."""
        locations = []
        password = None
        db = 0
        for part in (p.strip() for p in url.split(",")):
            parsed = urlsplit(part)
            if parsed.scheme != "redis":
                raise ValueError(f"{part!r} is not a redis:// URL")
            if not parsed.hostname:
                raise ValueError(f"{part!r} names no host")
            try:
                port = parsed.port or 6379
            except ValueError:
                raise ValueError(f"{part!r} has an invalid port") from None
            locations.append((parsed.hostname, port))
            password = parsed.password or password
            if parsed.path.strip("/"):
                try:
                    db = int(parsed.path.strip("/"))
                except ValueError:
                    raise ValueError(f"{part!r} has an invalid database number") from None
        return cls(tuple(locations), password, db)

    def describe(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.locations)


def _options() -> dict[str, Any]:
    return {
        "stream_timeout": COMMAND_TIMEOUT,
        "connect_timeout": CONNECT_TIMEOUT,
        "decode_responses": False,
        "retry_policy": NoRetryPolicy(),
    }


async def is_cluster(target: RedisTarget) -> bool:
    """Whether the first seed is a node of a Redis Cluster (``cluster_enabled:1``)."""
    host, port = target.locations[0]
    probe = coredis.Redis(host=host, port=port, password=target.password, **_options())
    async with probe:
        info = await probe.info("cluster")
    return bool(info.get("cluster_enabled"))


def make_client(target: RedisTarget, cluster: bool) -> coredis.Redis[bytes] | Any:
    """A client for the target (not yet entered: use it as an async context manager)."""
    if cluster:
        return coredis.RedisCluster(
            startup_nodes=[TCPLocation(host, port) for host, port in target.locations],
            password=target.password,
            non_atomic_cross_slot=True,
            **_options(),
        )
    host, port = target.locations[0]
    return coredis.Redis(host=host, port=port, db=target.db, password=target.password, **_options())
