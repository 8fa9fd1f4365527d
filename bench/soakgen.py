"""The soak's clients: a churning population, slow readers and junk senders on one loop.

    python bench/soakgen.py < commands

The same process protocol as :mod:`bench.loadgen` (one JSON spec line on
stdin, then commands; JSON event lines on stdout). Three kinds of connection:

- tracked users (``users`` in the spec): a share connect at the start
  (``initial_share``, spread over ``ramp`` seconds), the others by
  ``late_join_by`` seconds (first seen during the warm-up); then, at ``rates`` per
  second in all, chosen at random among the open ones: ``status`` (a
  ``set_status`` with a unique statusMessage; ``offline``, appear offline, only
  for every ``invisible_every``-th user), ``identify`` (a unique username),
  ``query`` (``get_presence`` of 1-20 ids, ``get_all_users`` with a limit of
  5-20, ``check_user_status``, ``get_online_count``, an active heartbeat),
  ``subscribe`` / ``unsubscribe`` (1-10 ids) and ``disconnect``: a clean close
  (close frame 1000), an abrupt one (RST: SO_LINGER 0), a ``logout``, or
  falling silent until the server closes it (4002). A user comes back with the
  same deviceId well within the grace period, well after it, or minutes later.
  Each connection heartbeats at the server's ``heartbeatInterval``.
- ``slow`` slow readers (``s0``..): a small receive buffer; once welcomed they
  ask for ``slow_burst`` whole user lists at once (``get_all_users`` limit
  1000, within the rate limiter's burst), stop reading for ``slow_stall``
  seconds, then read everything: the server should have closed them with
  1013, and they should see that close frame. They come back 5-15 s later.
- ``junk`` junk senders (``j0``..): now and then invalid JSON, a binary frame,
  an unknown type, a bad status, a bad user id, a message without its field,
  or a message over the size limit (answered ``TOO_LARGE`` and closed 1009).

A model of every tracked user follows what the server acknowledged: the
device's status, the statusMessage and the username, as sets of values the
server may hold (one value, unless a request was in flight when its connection
went, or a reconnect came near the grace period's end). ``verify`` asks every
open tracked connection for its own view (``get_presence`` of itself) and
compares; the ``result`` event carries the model for the orchestrator's checks
of REST and of the SQLite file.

Commands: ``quiesce`` (no more actions or reconnects; silent, slow and junk
connections are closed), ``verify``, ``leave`` (every connection closes, in
the same mix of ways), ``stop``.
"""

from __future__ import annotations

import heapq
import random
import select
import socket
import struct
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import epoll_loop, wire
from bench.loadgen import Conn, LoadGen

TRACKED, SLOW, JUNK = "user", "slow", "junk"
# Kept well away from the grace period's end so the status a reconnect finds is
# known; inside MARGIN of it either answer is accepted.
MARGIN = 2.0
# A slow reader's receive buffer: what a stalled phone on a bad network holds.
SLOW_RCVBUF = 4096
# limits.outbound_bytes' default: a session whose queued answers pass it is closed 1013.
SLOW_OUTBOUND_BOUND = 1 << 20
# After reading again, how long a slow reader waits for the server's close.
SLOW_CLOSE_WAIT = 6.0
# Larger than limits.max_message_bytes (64 KiB by default).
OVERSIZED = 70_000
# Within this many seconds of presence.away_after an idle online session may be away.
AWAY_MARGIN = 10.0
# How a user leaves (weights) and when it comes back (weights).
LEAVE_KINDS = (("close", 35), ("rst", 35), ("logout", 20), ("silent", 10))
COMEBACKS = (("quick", 50), ("late", 35), ("long", 15))
JUNK_KINDS = (
    ("invalid_json", 20),
    ("binary", 15),
    ("unknown_type", 15),
    ("bad_status", 15),
    ("bad_user_id", 15),
    ("missing_field", 10),
    ("oversized", 10),
)
STATUSES = ("online", "busy", "away")


class SoakConn(Conn):
    """A connection with what the soak needs to know about it."""

    __slots__ = (
        "check_at",
        "junk_due",
        "kind",
        "last_activity",
        "leaving",
        "pending",
        "plan",
        "slow_bytes",
        "stall_until",
        "subscribed",
    )

    def __init__(self, index: int, user_id: str, kind: str) -> None:
        super().__init__(index, user_id)
        self.state = Conn.CLOSED
        self.kind = kind
        # How we are ending it ("close", "rst", "logout", "silent"), None while not.
        self.leaving: str | None = None
        # requestId -> ("status", status, message) | ("identify", username)
        self.pending: dict[str, tuple[str, ...]] = {}
        self.plan = "quick"  # when it comes back after leaving
        self.last_activity = 0.0
        self.subscribed: set[str] = set()
        self.stall_until = 0.0
        self.check_at = 0.0
        self.junk_due = 0.0
        # What the answers to a slow reader's stall came to (JSON bytes read).
        self.slow_bytes = 0


def _choose(rng: random.Random, weighted: tuple[tuple[str, int], ...]) -> str:
    names, weights = zip(*weighted, strict=True)
    choice: str = rng.choices(names, weights)[0]
    return choice


class SoakGen(LoadGen):
    """LoadGen with the soak's users; see the module docstring."""

    def __init__(self, spec: dict[str, Any]) -> None:
        tracked: list[str] = spec["users"]
        slow = [f"s{i}" for i in range(spec.get("slow", 0))]
        junk = [f"j{i}" for i in range(spec.get("junk", 0))]
        super().__init__({**spec, "users": []})
        kinds = [TRACKED] * len(tracked) + [SLOW] * len(slow) + [JUNK] * len(junk)
        self.soak: list[SoakConn] = [
            SoakConn(i, user, kind)
            for i, (user, kind) in enumerate(zip(tracked + slow + junk, kinds, strict=True))
        ]
        self.conns = list(self.soak)
        self.tracked = len(tracked)
        self.pool = tracked
        self.rng = random.Random(spec.get("seed", 1))
        self.grace: float = spec["grace"]
        self.away_after: float = spec["away_after"]
        self.invisible_every: int = spec.get("invisible_every", 10)
        self.rates: dict[str, float] = spec["rates"]
        self.slow_burst: int = spec.get("slow_burst", 40)
        self.slow_stall: float = spec.get("slow_stall", 3.0)
        self.rate_total = sum(self.rates.values())
        self.next_action = float("inf")
        self.quiesced = False
        self.sequence = 0
        # the model of each tracked user
        n = len(tracked)
        self.statuses: list[set[str]] = [{"offline"} for _ in range(n)]
        self.messages: list[set[str | None]] = [{None} for _ in range(n)]
        self.names: list[set[str | None]] = [{None} for _ in range(n)]
        self.lost_at = [0.0] * n
        self.lost_logout = [False] * n
        self.ever_welcomed = [False] * n
        self.ever_invisible = [False] * n
        # what happened
        self.welcomes: Counter[str] = Counter()
        self.role_errors: dict[str, Counter[str]] = {
            TRACKED: Counter(),
            SLOW: Counter(),
            JUNK: Counter(),
        }
        self.role_closes: dict[str, Counter[str]] = {
            TRACKED: Counter(),
            SLOW: Counter(),
            JUNK: Counter(),
        }
        self.actions: Counter[str] = Counter()
        self.junk_sent: Counter[str] = Counter()
        self.acked: Counter[str] = Counter()
        self.ack_mismatches: list[str] = []
        self.slow_not_closed = 0
        self.slow_within_bound = 0
        self.verify_started = False
        self.verify_sent = 0
        self.verify_answered = 0
        self.verify_mismatches: list[str] = []
        self.verify_view: dict[str, Any] = {}
        self.initial = 0
        now = time.time()
        ramp = float(spec.get("ramp", 10.0))
        share = float(spec.get("initial_share", 0.8))
        late_by = max(ramp, float(spec.get("late_join_by", ramp)))
        for conn in self.soak:
            if conn.kind != TRACKED or self.rng.random() < share:
                self.initial += 1
                heapq.heappush(self.retries, (now + self.rng.uniform(0, ramp), conn.index))
            else:  # first seen later, during the warm-up
                heapq.heappush(self.retries, (now + self.rng.uniform(ramp, late_by), conn.index))
        self.next_action = now + ramp

    # --- connecting ------------------------------------------------------------------

    def _fill_connects(self, now: float) -> None:
        while self.retries and self.retries[0][0] <= now and self.in_flight < self.concurrency:
            _, index = heapq.heappop(self.retries)
            conn = self.soak[index]
            if conn.state != Conn.CLOSED:
                continue
            conn.state = Conn.CONNECTING
            conn.buf = bytearray()
            conn.out = b""
            conn.leaving = None
            conn.pending = {}
            conn.subscribed = set()
            conn.stall_until = conn.check_at = conn.junk_due = 0.0
            self.retry_attempts += 1
            self._connect(conn)
        if not self.connected_sent and self.connected + self.failed >= self.initial:
            self.connected_sent = True
            self._emit("connected", failures=dict(self.failures), **self._counts())

    def _connect(self, conn: Conn) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, epoll_loop.SO_TIMESTAMPNS, 1)
        if isinstance(conn, SoakConn) and conn.kind == SLOW:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_RCVBUF)
        conn.sock = sock
        self.in_flight += 1
        code = sock.connect_ex((self.host, self.port))
        if code not in (0, 115):  # EINPROGRESS
            self._fail(conn, f"connect: {code}")
            return
        self.by_fd[sock.fileno()] = conn
        self.epoll.register(sock.fileno(), select.EPOLLOUT)

    def _fail(self, conn: Any, reason: str) -> None:
        """The connection ended: record how, update the model, plan the comeback."""
        if conn.state == Conn.CLOSED:
            return
        now = time.time()
        if conn.welcomed:
            conn.welcomed = False
            self.role_closes[conn.kind][f"{conn.leaving or 'server'}:{reason}"] += 1
            self.closes[reason] += 1
            if conn.kind == TRACKED:
                self._lost(conn, now)
        else:
            self.in_flight -= 1
            self.failed += 1
            self.failures[reason] += 1
        self._drop(conn)
        if not self.quiesced:
            heapq.heappush(self.retries, (now + self._comeback_delay(conn), conn.index))

    def _comeback_delay(self, conn: SoakConn) -> float:
        if conn.kind == SLOW:
            return self.rng.uniform(5.0, 15.0)
        if conn.kind == JUNK:
            return self.rng.uniform(2.0, 6.0)
        if conn.leaving is None:  # closed by the server unasked, or never welcomed
            return 1.0
        if conn.plan == "quick":
            return self.rng.uniform(0.2, max(0.3, self.grace - 2 * MARGIN))
        if conn.plan == "late":
            return self.rng.uniform(self.grace + 2 * MARGIN, self.grace + 30.0)
        return self.rng.uniform(60.0, 300.0)

    def _abort(self, conn: SoakConn) -> None:
        """Close with a TCP reset, as a crashed client or a dropped network would."""
        assert conn.sock is not None
        conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._fail(conn, "rst")

    # --- the model -------------------------------------------------------------------

    def _lost(self, conn: SoakConn, now: float) -> None:
        i = conn.index
        for request in conn.pending.values():
            # Sent, never acknowledged: the server may or may not have applied it.
            if request[0] == "status":
                self.statuses[i].add(request[1])
                self.messages[i].add(request[2])
            else:
                self.names[i].add(request[1])
        conn.pending = {}
        self.lost_at[i] = now
        self.lost_logout[i] = conn.leaving == "logout"

    def _welcomed(self, conn: SoakConn, now: float) -> None:
        i = conn.index
        gap = now - self.lost_at[i]
        if not self.ever_welcomed[i] or self.lost_logout[i] or gap > self.grace + MARGIN:
            self.statuses[i] = {"online"}
        elif gap >= self.grace - MARGIN:
            self.statuses[i].add("online")
        # else: the same deviceId within the grace period keeps the device's status
        self.ever_welcomed[i] = True
        self.lost_logout[i] = False

    def _acknowledged(self, conn: SoakConn, message: dict[str, Any]) -> None:
        request = conn.pending.pop(str(message.get("requestId")), None)
        if request is None:
            return
        i = conn.index
        if request[0] == "status":
            _, status, note = request
            self.statuses[i] = {status}
            self.messages[i] = {note}
            self.acked["status"] += 1
            if message.get("status") != status or message.get("statusMessage") != note:
                self.ack_mismatches.append(f"{conn.user_id}: sent {request}, got {message}")
        else:
            self.names[i] = {request[1]}
            self.acked["identify"] += 1
            if message.get("username") != request[1]:
                self.ack_mismatches.append(f"{conn.user_id}: sent {request}, got {message}")

    # --- messages --------------------------------------------------------------------

    def _on_message(self, conn: Conn, message: dict[str, Any], now: float) -> None:
        assert isinstance(conn, SoakConn)
        super()._on_message(conn, message, now)
        kind = message.get("type")
        if conn.kind == SLOW and str(message.get("requestId", "")).startswith("slow"):
            conn.slow_bytes += len(orjson.dumps(message))
        if kind == "welcome":
            self.welcomes[conn.kind] += 1
            conn.last_activity = now
            if conn.kind == TRACKED:
                self._welcomed(conn, now)
            elif conn.kind == SLOW:
                self._stall(conn, now)
            else:
                conn.junk_due = now + self.rng.uniform(1.0, 4.0)
        elif kind == "error":
            self.role_errors[conn.kind][str(message.get("code"))] += 1
            conn.pending.pop(str(message.get("requestId")), None)
        elif kind in ("status_updated", "identified"):
            self._acknowledged(conn, message)
        elif kind == "presence" and message.get("requestId") == "verify":
            self._check_own_view(conn, message)

    def _check_own_view(self, conn: SoakConn, message: dict[str, Any]) -> None:
        self.verify_answered += 1
        i = conn.index
        users = message.get("users") or [{}]
        view = users[0]
        self.verify_view[conn.user_id] = view
        expected = self.statuses[i]
        for field, allowed in (
            ("status", expected),
            ("statusMessage", self.messages[i]),
            ("username", self.names[i]),
        ):
            if view.get(field) not in allowed:
                shown = sorted(map(str, allowed))
                self.verify_mismatches.append(
                    f"{conn.user_id} {field}: {view.get(field)!r} not in {shown}"
                )

    def _send_json(self, conn: SoakConn, body: dict[str, Any]) -> None:
        self._send(conn, orjson.dumps(body))

    # --- the load --------------------------------------------------------------------

    def _timers(self, now: float) -> float:
        timeout = super()._timers(now)  # heartbeats and progress: a duration
        if self.quiesced:
            return timeout
        while self.next_action <= now:
            self._act(now)
            self.next_action += self.rng.expovariate(self.rate_total)
        due = self.next_action
        for conn in self.soak[self.tracked :]:
            due = min(due, self._side_timers(conn, now))
        return min(timeout, max(0.0, due - time.time()))

    def _pick(self) -> SoakConn | None:
        """A random open tracked connection that is not leaving (None after 20 misses)."""
        for _ in range(20):
            conn = self.soak[self.rng.randrange(self.tracked)]
            if conn.state == Conn.OPEN and conn.welcomed and conn.leaving is None:
                return conn
        return None

    def _act(self, now: float) -> None:
        names = list(self.rates)
        action = self.rng.choices(names, [self.rates[n] for n in names])[0]
        conn = self._pick()
        if conn is None:
            self.actions["none_open"] += 1
            return
        self.actions[action] += 1
        self.sequence += 1
        request_id = f"r{self.sequence}"
        if action != "disconnect":
            conn.last_activity = now
        if action == "status":
            invisible_ok = conn.index % self.invisible_every == 0
            status = self.rng.choice(STATUSES + (("offline",) if invisible_ok else ()))
            if status == "offline":
                self.ever_invisible[conn.index] = True
            note = f"m{self.sequence}"
            conn.pending[request_id] = ("status", status, note)
            self._send_json(
                conn,
                {
                    "type": "set_status",
                    "status": status,
                    "statusMessage": note,
                    "requestId": request_id,
                },
            )
        elif action == "identify":
            name = f"n{self.sequence}"
            conn.pending[request_id] = ("identify", name)
            self._send_json(conn, {"type": "identify", "username": name, "requestId": request_id})
        elif action == "query":
            self._query(conn, request_id)
        elif action == "subscribe":
            ids = self.rng.sample(self.pool, self.rng.randint(1, 10))
            if len(conn.subscribed) + len(ids) > 4000:
                ids = list(conn.subscribed)[:10]
                conn.subscribed.difference_update(ids)
                self._send_json(
                    conn, {"type": "unsubscribe", "userIds": ids, "requestId": request_id}
                )
            else:
                conn.subscribed.update(ids)
                self._send_json(
                    conn, {"type": "subscribe", "userIds": ids, "requestId": request_id}
                )
        elif action == "unsubscribe":
            ids = list(conn.subscribed)[: self.rng.randint(1, 10)] or [self.rng.choice(self.pool)]
            conn.subscribed.difference_update(ids)
            self._send_json(conn, {"type": "unsubscribe", "userIds": ids, "requestId": request_id})
        elif action == "disconnect":
            self._leave(conn, _choose(self.rng, LEAVE_KINDS), _choose(self.rng, COMEBACKS))

    def _query(self, conn: SoakConn, request_id: str) -> None:
        pick = self.rng.random()
        body: dict[str, Any]
        if pick < 0.35:
            ids = self.rng.sample(self.pool, self.rng.randint(1, 20))
            if self.rng.random() < 0.2:
                ids.append(f"nobody{self.rng.randrange(1000)}")  # never seen: offline
            body = {"type": "get_presence", "userIds": ids}
        elif pick < 0.65:
            body = {"type": "get_all_users", "limit": self.rng.randint(5, 20)}
            if self.rng.random() < 0.3:
                body["status"] = self.rng.choice(("online", "busy", "away", "offline"))
        elif pick < 0.8:
            body = {"type": "check_user_status", "targetUserId": self.rng.choice(self.pool)}
        elif pick < 0.9:
            body = {"type": "get_online_count"}
        else:
            body = {"type": "heartbeat", "active": True}
        body["requestId"] = request_id
        self._send_json(conn, body)

    def _leave(self, conn: SoakConn, how: str, plan: str) -> None:
        conn.leaving = how
        conn.plan = plan
        if how == "close":
            self._send(conn, wire.close_frame(1000), framed=False)
        elif how == "rst":
            self._abort(conn)
        elif how == "logout":
            self._send_json(conn, {"type": "logout"})
        else:  # silent: no heartbeat from now on (its heap entries go stale)
            conn.next_beat = -1.0

    # --- slow readers and junk senders -----------------------------------------------

    def _stall(self, conn: SoakConn, now: float) -> None:
        conn.slow_bytes = 0
        for n in range(self.slow_burst):
            self._send_json(conn, {"type": "get_all_users", "limit": 1000, "requestId": f"slow{n}"})
        if conn.sock is not None and not conn.out:
            self.epoll.modify(conn.sock.fileno(), 0)  # stop reading (errors still come)
            conn.stall_until = now + self.slow_stall
        else:  # the requests did not fit in the socket: it reads, and is checked later
            conn.check_at = now + self.slow_stall + SLOW_CLOSE_WAIT

    def _side_timers(self, conn: SoakConn, now: float) -> float:
        """Run a slow reader's or a junk sender's next step if due; when the next is."""
        if conn.state != Conn.OPEN or not conn.welcomed or conn.sock is None:
            return float("inf")
        if conn.kind == SLOW:
            if conn.stall_until and now >= conn.stall_until:
                conn.stall_until = 0.0
                conn.check_at = now + SLOW_CLOSE_WAIT
                self.epoll.modify(conn.sock.fileno(), select.EPOLLIN)
            elif conn.check_at and now >= conn.check_at:
                conn.check_at = 0.0
                # Answers that all fit the server's outbound bound are sent, as
                # they should be (early in a run the user lists are short).
                if conn.slow_bytes > SLOW_OUTBOUND_BOUND:
                    self.slow_not_closed += 1
                else:
                    self.slow_within_bound += 1
                self._leave(conn, "close", "quick")
            return min(conn.stall_until or float("inf"), conn.check_at or float("inf"))
        if conn.junk_due and now >= conn.junk_due:
            kind = _choose(self.rng, JUNK_KINDS)
            self.junk_sent[kind] += 1
            self._junk(conn, kind)
            conn.junk_due = 0.0 if kind == "oversized" else now + self.rng.uniform(2.0, 6.0)
        return conn.junk_due or float("inf")

    def _junk(self, conn: SoakConn, kind: str) -> None:
        if kind == "invalid_json":
            self._send(conn, b'{"type": "heartbeat"')
        elif kind == "binary":
            self._send(conn, wire.client_frame(b"\x00\x01junk", wire.OP_BINARY), framed=False)
        elif kind == "unknown_type":
            self._send_json(conn, {"type": "teleport"})
        elif kind == "bad_status":
            self._send_json(conn, {"type": "set_status", "status": "sleeping"})
        elif kind == "bad_user_id":
            self._send_json(conn, {"type": "get_presence", "userIds": ["a b"]})
        elif kind == "missing_field":
            self._send_json(conn, {"type": "get_presence"})
        else:
            self._send(conn, b'"' + b"x" * OVERSIZED + b'"')

    # --- commands --------------------------------------------------------------------

    def _command(self, command: dict[str, Any]) -> None:
        cmd = command["cmd"]
        if cmd == "quiesce":
            self.quiesced = True
            self.retries.clear()
            for conn in self.soak:
                side = conn.kind != TRACKED or conn.leaving == "silent"
                if conn.state == Conn.OPEN and conn.welcomed and side:
                    self._leave(conn, "rst", "long")
        elif cmd == "verify":
            self.verify_started = True
            now = time.time()
            for conn in self.soak[: self.tracked]:
                if conn.state == Conn.OPEN and conn.welcomed and conn.leaving is None:
                    i = conn.index
                    if (
                        "online" in self.statuses[i]
                        and now - conn.last_activity > self.away_after - AWAY_MARGIN
                    ):
                        self.statuses[i].add("away")
                    self.verify_sent += 1
                    self._send_json(
                        conn,
                        {"type": "get_presence", "userIds": [conn.user_id], "requestId": "verify"},
                    )
        elif cmd == "leave":
            self.quiesced = True
            self.retries.clear()
            for conn in self.soak:
                if conn.state != Conn.CLOSED and conn.leaving is None:
                    if conn.state == Conn.OPEN and conn.welcomed:
                        self._leave(conn, _choose(self.rng, LEAVE_KINDS[:3]), "long")
                    else:
                        self._fail(conn, "left before welcome")
        else:
            super()._command(command)

    def _counts(self) -> dict[str, Any]:
        open_by_kind: Counter[str] = Counter()
        for conn in self.soak:
            if conn.state != Conn.CLOSED:
                open_by_kind[conn.kind] += 1
        return {
            **super()._counts(),
            "live": sum(open_by_kind.values()),
            "live_by_kind": dict(open_by_kind),
            "verify_started": self.verify_started,
            "verify_sent": self.verify_sent,
            "verify_answered": self.verify_answered,
            "acked": dict(self.acked),
        }

    def _result_fields(self) -> dict[str, Any]:
        model = {
            user: {
                "statuses": sorted(self.statuses[i]),
                "messages": sorted(self.messages[i], key=str),
                "names": sorted(self.names[i], key=str),
                "ever_welcomed": self.ever_welcomed[i],
                "ever_invisible": self.ever_invisible[i],
            }
            for i, user in enumerate(self.pool)
        }
        return {
            "model": model,
            "welcomes": dict(self.welcomes),
            "role_errors": {k: dict(v) for k, v in self.role_errors.items()},
            "role_closes": {k: dict(v) for k, v in self.role_closes.items()},
            "actions": dict(self.actions),
            "junk_sent": dict(self.junk_sent),
            "ack_mismatches": self.ack_mismatches[:20],
            "ack_mismatch_count": len(self.ack_mismatches),
            "slow_not_closed": self.slow_not_closed,
            "slow_within_bound": self.slow_within_bound,
            "verify_mismatches": self.verify_mismatches[:20],
            "verify_mismatch_count": len(self.verify_mismatches),
            "verified_users": sorted(self.verify_view),
        }


def main() -> None:
    epoll_loop.main(SoakGen)


if __name__ == "__main__":
    main()
