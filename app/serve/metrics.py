"""Prometheus metrics for `arbiter serve` (text exposition at ``GET /metrics``).

A private :class:`CollectorRegistry` per app: two servers in one process (tests) never share
counters, and the process-wide default collectors are left out. Labels are bounded: the
endpoint is the route's template (never the raw path), the model one of the served names.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

#: request latency buckets, seconds (a tiny cross-encoder answers in ~5 ms, a big decoder in seconds)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: items per scorer call
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The server's counters, gauges and histograms, and their text form."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: a timestamp per label set, twice the lines
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("arbiter_requests", "HTTP requests answered, by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("arbiter_request_latency_seconds", "Time from request to response, seconds",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.items = Counter("arbiter_items_scored", "Items (texts, responses, documents) scored",
                             ["model"], registry=r)
        self.queue_depth = Gauge("arbiter_queue_depth", "Items waiting to be scored", ["model"], registry=r)
        self.batch_items = Histogram("arbiter_batch_items", "Items per scorer call (dynamic batching)",
                                     ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.batch_latency = Histogram("arbiter_batch_latency_seconds", "Time one scorer call took, seconds",
                                       ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("arbiter_rejected", "Requests refused with 429 because the queue was full",
                                ["model"], registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
