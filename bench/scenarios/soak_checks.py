"""What the soak measures and checks: server samples, flat curves, and nothing lost.

Pure functions over what the run collected (samples, REST answers, the
generator's model of every user, the SQLite file), so the orchestration in
:mod:`bench.scenarios.soak` stays a sequence of phases.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from attrs import frozen

from bench.processes import ServerProcess, http_get

# Ids per REST /api/presence request when reading back every user (URL length).
PRESENCE_CHUNK = 200
# Flat: RSS may end this much above its start (the larger of the two) ...
RSS_MARGIN_KB = 10 * 1024
RSS_MARGIN_SHARE = 0.10
# ... descriptors and tasks by the live connections' spread plus this many
# (listening sockets, the SQLite files, REST connections in flight).
COUNT_MARGIN = 16


@frozen
class Sample:
    """The server at one moment: seconds since the load started, and its phase."""

    at: float
    phase: str
    rss_kb: int
    fds: int
    tasks: float | None
    connections: float | None
    sessions: float | None
    online: float | None
    pushes: float | None
    open_clients: int
    cpu_seconds: float


async def take_sample(server: ServerProcess, at: float, phase: str, open_clients: int) -> Sample:
    """RSS and descriptors from /proc, tasks and the engine's gauges from /metrics
    (None when the server did not answer within its timeout)."""
    rss = server.rss_kb()
    fds = len(os.listdir(f"/proc/{server.pid}/fd"))
    cpu = server.cpu_seconds()
    scrape = await server.metrics()
    values = scrape.values if scrape is not None else {}

    def value(name: str) -> float | None:
        return values.get(name)

    return Sample(
        at,
        phase,
        rss,
        fds,
        value("presence_trio_tasks_living"),
        value("presence_connections"),
        value("presence_sessions"),
        value("presence_online_users"),
        value("presence_pushes_total"),
        open_clients,
        cpu,
    )


def slope_per_10min(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of ``(seconds, value)`` points, per 600 s."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 600


@frozen
class Curve:
    """One measured curve over the load phase: after warm-up, start and end; the
    maximum over the whole load; the slope after warm-up; the verdict."""

    name: str
    unit: str
    idle: float | None
    start: float | None
    end: float | None
    maximum: float | None
    slope: float | None
    after_leave: float | None
    allowed: float
    flat: bool | None

    def line(self) -> str:
        verdict = {True: "PASS", False: "FAIL", None: "n/a"}[self.flat]
        if self.start is None or self.end is None:
            return f"{self.name}: {verdict} (no samples after warm-up)"
        return (
            f"{self.name}: {verdict}  start {self.start:,.1f} -> end {self.end:,.1f} {self.unit}"
            f" (end - start {self.end - self.start:+,.1f}, allowed <= {self.allowed:,.1f}),"
            f" max {self.maximum or 0:,.1f}, slope {self.slope or 0:+,.1f} per 10 min"
        )


def curves(samples: Sequence[Sample], warmup: float) -> list[Curve]:
    """RSS (MB), descriptors and tasks over the load phase, judged flat or not."""
    load = [s for s in samples if s.phase == "load"]
    after = [s for s in load if s.at >= warmup]
    idle = next((s for s in samples if s.phase == "idle"), None)
    left = next((s for s in samples if s.phase == "left"), None)
    spread = max(s.open_clients for s in after) - min(s.open_clients for s in after) if after else 0

    def build(name: str, unit: str, pick: Any, allowed_for: Any) -> Curve:
        values = [(s.at, pick(s)) for s in after if pick(s) is not None]
        every = [pick(s) for s in load if pick(s) is not None]
        start = values[0][1] if values else None
        end = values[-1][1] if values else None
        allowed = float(allowed_for(start, after[0] if after else None))
        flat = None if start is None or end is None else end - start <= allowed
        return Curve(
            name,
            unit,
            pick(idle) if idle else None,
            start,
            end,
            max(every) if every else None,
            slope_per_10min(values),
            pick(left) if left else None,
            allowed,
            flat,
        )

    def per_connection(pick: Any, first: Sample | None) -> float:
        """How much of ``pick`` a live connection holds, from idle to the warm start."""
        if idle is None or first is None or not first.open_clients:
            return 1.0
        base, warm = pick(idle), pick(first)
        if base is None or warm is None:
            return 1.0
        return max(1.0, float(warm - base) / first.open_clients)

    def rss(s: Sample) -> float:
        return s.rss_kb / 1024

    def fds(s: Sample) -> float:
        return float(s.fds)

    def tasks(s: Sample) -> float | None:
        return s.tasks

    return [
        build(
            "RSS",
            "MB",
            rss,
            lambda start, _: max(RSS_MARGIN_KB / 1024, RSS_MARGIN_SHARE * (start or 0)),
        ),
        build(
            "open fds",
            "",
            fds,
            lambda _, first: per_connection(fds, first) * spread + COUNT_MARGIN,
        ),
        build(
            "trio tasks",
            "",
            tasks,
            lambda _, first: per_connection(tasks, first) * spread + COUNT_MARGIN,
        ),
    ]


async def presence_of(server: ServerProcess, users: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Every user's UserView as an anonymous REST caller sees it."""
    views: dict[str, dict[str, Any]] = {}
    for start in range(0, len(users), PRESENCE_CHUNK):
        ids = ",".join(users[start : start + PRESENCE_CHUNK])
        status, body = await http_get(server.port, f"/api/presence?ids={ids}")
        if status != 200:
            raise ValueError(f"/api/presence answered {status}: {body[:200]!r}")
        for view in orjson.loads(body)["users"]:
            views[view["userId"]] = view
    return views


async def stats_of(server: ServerProcess) -> dict[str, Any]:
    status, body = await http_get(server.port, "/api/stats")
    if status != 200:
        raise ValueError(f"/api/stats answered {status}")
    answer: dict[str, Any] = orjson.loads(body)
    return answer


def rest_mismatches(
    views: dict[str, dict[str, Any]],
    model: dict[str, dict[str, Any]],
    connected: set[str],
) -> list[str]:
    """Where REST disagrees with what the server acknowledged.

    A connected user shows its device's status; anyone else is offline. Message
    and username are compared for users that never appeared offline: others
    see what an invisible user last showed while visible, which the model
    does not follow (its own view, checked by the generator, and the SQLite
    file cover them)."""
    wrong = []
    for user, expected in model.items():
        view = views.get(user)
        if view is None:
            wrong.append(f"{user}: missing from /api/presence")
            continue
        statuses = set(expected["statuses"]) if user in connected else {"offline"}
        if view["status"] not in statuses:
            wrong.append(f"{user} status: {view['status']!r} not in {sorted(statuses)}")
        if expected["ever_invisible"]:
            continue
        for field, allowed in (("statusMessage", "messages"), ("username", "names")):
            if view.get(field) not in expected[allowed]:
                wrong.append(f"{user} {field}: {view.get(field)!r} not in {expected[allowed]}")
    return wrong


def online_range(model: dict[str, dict[str, Any]], connected: set[str]) -> tuple[int, int]:
    """The fewest and most users that may be online: connected, and not surely invisible."""
    sure = sum(1 for u in connected if "offline" not in model[u]["statuses"])
    maybe = sum(1 for u in connected if model[u]["statuses"] != ["offline"])
    return sure, maybe


def read_users(path: Path) -> dict[str, tuple[str | None, str | None, str]]:
    """``user_id -> (status_message, username, last_status)`` from the SQLite file,
    opened read-only after the server's exit."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {
            user: (message, name, status)
            for user, message, name, status in conn.execute(
                "SELECT user_id, status_message, username, last_status FROM users"
            )
        }
    finally:
        conn.close()


def store_mismatches(
    rows: dict[str, tuple[str | None, str | None, str]], model: dict[str, dict[str, Any]]
) -> list[str]:
    """Where the file disagrees with what the server acknowledged: every user's own
    statusMessage and username, and nobody left anything but offline."""
    wrong = []
    for user, expected in model.items():
        row = rows.get(user)
        if row is None:
            if expected["ever_welcomed"]:
                wrong.append(f"{user}: no row")
            continue
        message, name, status = row
        if message not in expected["messages"]:
            wrong.append(f"{user} status_message: {message!r} not in {expected['messages']}")
        if name not in expected["names"]:
            wrong.append(f"{user} username: {name!r} not in {expected['names']}")
        if status != "offline":
            wrong.append(f"{user} last_status: {status!r}")
    return wrong
