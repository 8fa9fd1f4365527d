"""The cluster benchmark (issue 12): ``bench fanout`` with ``--workers N --redis auto``.

A real run, tiny: a redis-server started by the bench, a supervisor and two worker
processes on one port, one generator process; the figures a reader compares
(CPU of every process, Redis's commands, connections per worker, deliveries that
crossed nodes) must be there and the bench must leave no process behind.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(ROOT / "bench" / "run.py")]


def _bench(*argv: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [*RUN, *argv], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_without_redis_are_refused_in_one_line() -> None:
    done = _bench("fanout", "--workers", "2", "--no-progress", timeout=60)
    assert done.returncode == 1
    assert "--workers 2: expected --redis URL or auto" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_tiny_fanout_on_two_workers_and_redis_reports_every_process() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    argv = ["fanout", "--users", "40", "--contacts", "4", "--rate", "20", "--seconds", "2"]
    done = _bench(
        *argv, "--workers", "2", "--redis", "auto", "--json", "--no-progress", timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads(done.stdout)
    assert document["parameters"]["workers"] == 2
    assert document["parameters"]["redis"] == "auto"
    [run] = document["runs"]
    details = run["details"]
    # Every connection is held by one of the two workers, and every push arrived.
    per_worker = details["connections_per_worker"]
    assert sorted(per_worker) == ["worker-1", "worker-2"]
    assert sum(per_worker.values()) == 40
    assert run["delivery_pct"] == 100.0
    assert 0 <= run["cross_node_share_pct"] <= 100
    # CPU of each process, Redis included, and Redis's own account of the window.
    for name in ("supervisor", "worker_1", "worker_2", "redis"):
        assert run[f"cpu_us_per_push_{name}"] is not None
    assert run["redis_calls_per_change"] > 0
    assert "evalsha" in details["cluster"]["redis_commands"]
    assert sorted(details["cluster"]["node_counters"]) == ["worker-1", "worker-2"]
    # Where each ran, and nothing left running afterwards.
    placement = details["placement"]
    assert {"supervisor", "worker-1", "worker-2", "redis", "generators"} <= set(placement)
    for name in ("supervisor", "worker-1", "worker-2", "redis"):
        assert not _alive(placement[name]["pid"]), f"{name} is still running"
