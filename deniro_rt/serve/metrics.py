"""Prometheus text-format metrics (exposition format 0.0.4), without a client library.

Everything is updated from the event loop thread only, so plain ints and floats need no locks.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Counter:
    name: str
    help: str
    label: str  # the one label this counter is split by
    values: dict[str, float] = field(default_factory=dict)

    def inc(self, label_value: str, amount: float = 1) -> None:
        self.values[label_value] = self.values.get(label_value, 0) + amount

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        return out + [f'{self.name}{{{self.label}="{v}"}} {n:g}' for v, n in sorted(self.values.items())]


@dataclass
class Histogram:
    name: str
    help: str
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, not cumulative; last one is +Inf
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def lines(self) -> list[str]:
        out = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, n in zip(list(self.buckets) + ["+Inf"], self.counts):
            cumulative += n
            out.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}' if bound != "+Inf"
                       else f'{self.name}_bucket{{le="+Inf"}} {cumulative}')
        return out + [f"{self.name}_sum {self.total:.6g}", f"{self.name}_count {self.count}"]


@dataclass
class Gauge:
    name: str
    help: str
    value: float = 0

    def lines(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge", f"{self.name} {self.value:g}"]


@dataclass
class ServeMetrics:
    requests: Counter = field(default_factory=lambda: Counter(
        "deniro_requests_total", "HTTP fill requests answered, by status code", "status"))
    texts: Counter = field(default_factory=lambda: Counter(
        "deniro_texts_total", "texts filled, by outcome", "outcome"))
    batch_size: Histogram = field(default_factory=lambda: Histogram(
        "deniro_batch_size", "texts per fill call of the dynamic batcher", BATCH_BUCKETS))
    queue_wait: Histogram = field(default_factory=lambda: Histogram(
        "deniro_queue_wait_seconds", "time a request waited before its batch started", SECONDS_BUCKETS))
    latency: Histogram = field(default_factory=lambda: Histogram(
        "deniro_request_latency_seconds", "fill request latency, body read to answer", SECONDS_BUCKETS))
    queued: Gauge = field(default_factory=lambda: Gauge(
        "deniro_queue_texts", "texts waiting for a batch now"))

    def render(self) -> str:
        parts = (self.requests, self.texts, self.batch_size, self.queue_wait, self.latency, self.queued)
        return "\n".join(line for metric in parts for line in metric.lines()) + "\n"
