"""Prometheus metrics of one server: what the app counts (requests, latency, tokens, prefix
cache hits, cancellations, editors' acceptance events) and what the backend reports when
scraped (queue depth, active requests, speculation counters). Each app has its own registry,
so two servers in one process (tests) never mix their numbers."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from zen_coder.serving.backends import BackendStats

PREFIX = "zen_coder"
# Editors wait for the first token in tens to hundreds of milliseconds; long completions take
# seconds.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# A "_created" timestamp beside every counter doubles what is scraped and tells nothing here.
disable_created_metrics()


class Metrics:
    def __init__(self, backend_stats: Callable[[], BackendStats]) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_request_seconds",
            "Time from a completion request to its last token, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from a completion request to its first text, by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of completed requests", registry=registry
        )
        self.cached_tokens = Counter(
            f"{PREFIX}_prompt_tokens_cached",
            "Prompt tokens served from the prefix cache (not computed again)",
            registry=registry,
        )
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Tokens generated", registry=registry
        )
        self.finished = Counter(
            f"{PREFIX}_completions",
            "Completions ended, by finish reason (stop, length, cancelled)",
            ["reason"],
            registry=registry,
        )
        self.cancelled = Counter(
            f"{PREFIX}_requests_cancelled",
            "Requests stopped before their end: the client disconnected or sent a newer one",
            ["cause"],
            registry=registry,
        )
        self.events = Counter(
            f"{PREFIX}_completion_events",
            "Editors' events about shown completions (Tabby's /v1/events: view, select, dismiss)",
            ["type"],
            registry=registry,
        )
        registry.register(BackendCollector(backend_stats))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BackendCollector(Collector):
    """Reads the backend's numbers at each scrape: nothing to keep in step."""

    def __init__(self, stats: Callable[[], BackendStats]) -> None:
        self.stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        stats = self.stats()
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_depth", "Requests waiting for the model", value=stats.queue_depth
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_active_requests", "Requests being generated", value=stats.active
        )
        for name, value in sorted(stats.counters.items()):
            yield CounterMetricFamily(
                f"{PREFIX}_backend_{metric_name(name)}",
                f"The backend's {name.replace('_', ' ')} since it started",
                value=value,
            )


def metric_name(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name).removesuffix("_total")
