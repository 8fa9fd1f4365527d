"""Users that all change status at once, and a kill -9 of the server after the first ack.

    python bench/burstgen.py < commands

The same process protocol as :mod:`bench.loadgen` (one JSON spec line on
stdin, then commands; JSON event lines on stdout). Spec fields beyond
LoadGen's: ``tag`` (the start of every statusMessage), ``kill_pid`` and
``kill_after`` (seconds).

On ``{"cmd": "burst"}`` every open connection sends one
``set_status busy`` with the statusMessage ``<tag><userId>``, so each change
can be found in the database afterwards, in one pass of the loop. The
arrival time (kernel receive timestamp) of each ``status_updated`` reply is
recorded. ``kill_after`` seconds after the first reply arrived the process
sends SIGKILL to ``kill_pid`` itself: the delay is measured from the kernel's
arrival time with no hop through the orchestrator, and ``killed_at`` (in
``progress`` and ``result``) is the wall time just before ``kill(2)``.

The ``result`` event adds ``burst_at`` (wall time before the first send)
and ``acks``: ``{userId: arrival}`` of every ``status_updated`` that arrived;
``progress`` and ``result`` carry ``acked`` (their number) and ``killed_at``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import epoll_loop
from bench.loadgen import Conn, LoadGen

REQUEST_ID = "burst"


class BurstGen(LoadGen):
    """LoadGen whose users send one identifiable status change each on ``burst``."""

    def __init__(self, spec: dict[str, Any]) -> None:
        super().__init__(spec)
        self.tag: str = spec["tag"]
        self.kill_pid: int = spec["kill_pid"]
        self.kill_after: float = spec["kill_after"]
        self.burst_at = 0.0
        self.acks: dict[str, float] = {}
        self.kill_due = float("inf")
        self.killed_at = 0.0

    def _command(self, command: dict[str, Any]) -> None:
        if command["cmd"] == "burst":
            self._burst()
        else:
            super()._command(command)

    def _burst(self) -> None:
        self.burst_at = time.time()
        for conn in self.conns:
            if conn.state == Conn.OPEN:
                body = {
                    "type": "set_status",
                    "status": "busy",
                    "statusMessage": f"{self.tag}{conn.user_id}",
                    "requestId": REQUEST_ID,
                }
                self._send(conn, orjson.dumps(body))
                self.changes_sent += 1

    def _on_message(self, conn: Conn, message: dict[str, Any], now: float) -> None:
        super()._on_message(conn, message, now)
        if message.get("type") == "status_updated" and message.get("requestId") == REQUEST_ID:
            self.acks[conn.user_id] = now
            if len(self.acks) == 1:
                self.kill_due = now + self.kill_after

    def _timers(self, now: float) -> float:
        wake = super()._timers(now)
        if not self.killed_at and time.time() >= self.kill_due:
            self.killed_at = time.time()
            # Already gone: the orchestrator reports the server's exit status.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.kill_pid, signal.SIGKILL)
            self._emit("progress", **self._counts())
        if self.killed_at:
            return wake
        return min(wake, max(0.0, self.kill_due - time.time()))

    def _counts(self) -> dict[str, Any]:
        return {**super()._counts(), "acked": len(self.acks), "killed_at": self.killed_at}

    def _result_fields(self) -> dict[str, Any]:
        return {"burst_at": self.burst_at, "acks": self.acks}


def main() -> None:
    epoll_loop.main(BurstGen)


if __name__ == "__main__":
    main()
