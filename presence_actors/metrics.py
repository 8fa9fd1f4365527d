"""Prometheus metrics, one registry per server instance.

Hot paths (every message in and out, every push) only bump plain integers;
the collector turns them and the engine's own counters into metric families
when ``/metrics`` is scraped, so a push costs no lock and no label lookup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .persistence.store import BatchResult


class Metrics:
    """Counters the gateway bumps, plus gauges read from the engine at scrape time."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.connections = 0
        self.messages_in: Counter[str] = Counter()
        self.messages_out: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.closes: Counter[int] = Counter()
        self.batch_size = Histogram(
            "presence_persistence_batch_size",
            "Intents per committed persistence batch.",
            buckets=(1, 5, 10, 50, 100, 250, 500, 1000, 5000, 10000),
            registry=self.registry,
        )
        self.commit_seconds = Histogram(
            "presence_persistence_commit_seconds",
            "Time spent committing one batch to SQLite.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
            registry=self.registry,
        )
        self._engine: Callable[[], dict[str, float]] | None = None
        self.registry.register(_Collector(self))

    def observe_commit(self, result: BatchResult, seconds: float) -> None:
        self.batch_size.observe(result.intents)
        self.commit_seconds.observe(seconds)

    def read_engine_with(self, read: Callable[[], dict[str, float]]) -> None:
        """Where the collector gets the engine's gauges and counters from."""
        self._engine = read

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def engine_values(self) -> dict[str, float]:
        return self._engine() if self._engine is not None else {}


# name -> (kind, help) for the values the engine reports.
_ENGINE_METRICS = {
    "sessions": ("gauge", "Sessions attached to the engine."),
    "online_users": ("gauge", "Users whose effective status is not offline."),
    "known_users": ("gauge", "Users the directory knows."),
    "actors": ("gauge", "Live user actors."),
    "pushes": ("counter", "Pushes put into session outboxes."),
    "outbox_drops": ("counter", "Pushes refused by a full outbox (the session closes, 1013)."),
    "actor_restarts": ("counter", "User actors restarted after a crash."),
    "persistence_pending": ("gauge", "Intents waiting to be committed."),
    "persistence_commit_failures": ("counter", "Failed commit attempts (retried)."),
    "trio_tasks_living": ("gauge", "Living trio tasks in the server (a leak shows here)."),
    # A node of a cluster (cluster.redis_url) only:
    "cluster_connected": ("gauge", "1 while this node's link to Redis works."),
    "cluster_published": ("counter", "Changes this node merged in Redis (its reports, cleanups)."),
    "cluster_received": ("counter", "Changes of watched users received from other nodes."),
    "cluster_watched": ("gauge", "Users this node follows the changes of (contacts fan-out)."),
    "cluster_joins": ("counter", "Times this node joined the cluster (1 + rejoins after outages)."),
}


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        yield GaugeMetricFamily(
            "presence_connections", "Open WebSocket connections.", value=m.connections
        )
        for name, labels, values in (
            ("presence_messages_in", "type", m.messages_in),
            ("presence_messages_out", "type", m.messages_out),
            ("presence_errors", "code", m.errors),
            ("presence_closes", "code", m.closes),
        ):
            family = CounterMetricFamily(name, _HELP[name], labels=[labels])
            for label, value in sorted(values.items()):
                family.add_metric([str(label)], value)
            yield family
        for key, reading in m.engine_values().items():
            kind, help_text = _ENGINE_METRICS[key]
            if kind == "gauge":
                yield GaugeMetricFamily(f"presence_{key}", help_text, value=reading)
            else:
                yield CounterMetricFamily(f"presence_{key}", help_text, value=reading)


_HELP = {
    "presence_messages_in": "Client messages received, by type.",
    "presence_messages_out": "Server messages sent, by type.",
    "presence_errors": "Errors sent to clients, by code.",
    "presence_closes": "Connections closed by the server, by close code.",
}
