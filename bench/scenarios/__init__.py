"""The scenarios ``bench/run.py`` knows, by name."""

from __future__ import annotations

from bench.scenarios import (
    broadcast,
    burst,
    connections,
    fanout,
    persistence,
    query,
    soak,
    stall,
)

SCENARIOS = {
    module.NAME: module
    for module in (connections, fanout, query, persistence, broadcast, stall, burst, soak)
}

__all__ = ["SCENARIOS"]
