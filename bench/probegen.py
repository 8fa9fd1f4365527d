"""A well-behaved client that measures the server's responsiveness: heartbeat round trips.

    python bench/probegen.py < commands

The same process protocol as :mod:`bench.loadgen` (one JSON spec line on
stdin, then commands; JSON event lines on stdout), with one connection per
user in ``users`` (the ``stall`` scenario uses one). Once a connection has its
``welcome`` it sends ``{"type": "heartbeat", "requestId": "p<n>"}`` every
``interval`` seconds (spec field, default 0.1) instead of the server's
``heartbeatInterval``, and reads everything the server sends, as a client
library would. Replies are matched by their ``requestId``: the round trip is
the kernel's arrival time of the reply (``SO_TIMESTAMPNS``) minus the wall time
just before the heartbeat was written to the socket.

The cadence is kept from the schedule, not from the replies: a server that
stalls finds the heartbeats of the stall waiting in its socket buffer, as it
would from a real client. A probe process delayed by its own core does not
send the missed heartbeats in a burst afterwards; it starts the schedule
again from then.

The ``result`` event adds ``probes``: ``[sent, rtt_seconds, error_code]`` per
answered heartbeat (``error_code`` null for a ``heartbeat_ack``),
``unanswered``: the send times of the heartbeats without a reply, and
``stopped_at``: when the probe stopped waiting for them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import epoll_loop
from bench.loadgen import Conn, LoadGen

DEFAULT_INTERVAL = 0.1


class ProbeGen(LoadGen):
    """LoadGen whose connections heartbeat every ``interval`` and time each reply."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.interval = float(spec.get("interval", DEFAULT_INTERVAL))
        self.next_probe: dict[int, float] = {}  # connection index -> next send
        self.outstanding: dict[str, float] = {}  # requestId -> send time
        self.answers: list[tuple[float, float, str | None]] = []
        self.sequence = 0

    def _timers(self, now: float) -> float:
        wake = super()._timers(now)
        due = float("inf")
        for index, at in self.next_probe.items():
            conn = self.conns[index]
            if conn.state != Conn.OPEN:
                continue
            if at <= now:
                self._probe(conn)
                at += self.interval
                if at <= now:  # this process fell behind: no catch-up burst
                    at = now + self.interval
                self.next_probe[index] = at
            due = min(due, at)
        return min(wake, max(0.0, due - time.time()))

    def _probe(self, conn: Conn) -> None:
        self.sequence += 1
        request_id = f"p{self.sequence}"
        body = orjson.dumps({"type": "heartbeat", "requestId": request_id})
        self.outstanding[request_id] = time.time()
        self._send(conn, body)
        self.heartbeats_sent += 1

    def _on_message(self, conn: Conn, message: dict[str, Any], now: float) -> None:
        super()._on_message(conn, message, now)
        kind = message.get("type")
        if kind == "welcome":
            # The server's own schedule (LoadGen's heap) is replaced by the probe's.
            self.heartbeats.clear()
            self.next_probe[conn.index] = now
            return
        sent = self.outstanding.pop(str(message.get("requestId")), None)
        if sent is None:
            return
        code = None if kind == "heartbeat_ack" else str(message.get("code") or kind)
        self.answers.append((sent, now - sent, code))

    def _result_fields(self) -> dict[str, Any]:
        return {
            "probes": self.answers,
            "unanswered": sorted(self.outstanding.values()),
            "stopped_at": time.time(),
        }


def main() -> None:
    epoll_loop.main(ProbeGen)


if __name__ == "__main__":
    main()
