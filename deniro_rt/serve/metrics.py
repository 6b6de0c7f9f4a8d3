"""The server's Prometheus metrics (prometheus_client), one registry per app: several apps in one
process (tests, Ray replicas) never mix their counts."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self):
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("deniro_requests", "HTTP fill requests answered, by status code", ["status"],
                                registry=registry)
        self.texts = Counter("deniro_texts", "texts filled, by outcome", ["outcome"], registry=registry)
        self.batch_size = Histogram("deniro_batch_size", "texts per fill call of the dynamic batcher",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_wait = Histogram("deniro_queue_wait_seconds", "time a request waited before its batch started",
                                    buckets=SECONDS_BUCKETS, registry=registry)
        self.latency = Histogram("deniro_request_latency_seconds", "fill request latency, body read to answer",
                                 buckets=SECONDS_BUCKETS, registry=registry)
        self.queued = Gauge("deniro_queue_texts", "texts waiting for a batch now", registry=registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
