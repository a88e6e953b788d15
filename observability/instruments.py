"""The metrics Orchestrion records. Importing this module imports prometheus_client,
so a worker imports it only after `prepare_multiprocess_dir`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

HTTP_REQUESTS = Counter("orchestrion_http_requests_total", "HTTP requests answered", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "orchestrion_http_request_duration_seconds", "HTTP request latency", ["method", "route"], buckets=LATENCY_BUCKETS
)
TASKS = Counter("orchestrion_celery_tasks_total", "Celery tasks finished", ["task", "state"])
TASK_LATENCY = Histogram(
    "orchestrion_celery_task_duration_seconds", "Celery task run time", ["task"], buckets=LATENCY_BUCKETS
)
EMBED_BATCH = Histogram(
    "orchestrion_embed_batch_texts",
    "Texts per embedding model call (concurrent callers share calls)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
EMBED_SECONDS = Histogram("orchestrion_embed_seconds", "Embedding model call time", buckets=LATENCY_BUCKETS)


class QueueDepthCollector(Collector):
    """Reads each queue's backlog from the broker at scrape time, so the number is never stale."""

    def __init__(self, queues: Sequence[str], depth_of: Callable[[str], int]) -> None:
        self._queues = list(queues)
        self._depth_of = depth_of

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily("orchestrion_queue_depth", "Tasks waiting in a Celery queue", labels=["queue"])
        for queue in self._queues:
            try:
                family.add_metric([queue], float(self._depth_of(queue)))
            except Exception:  # noqa: BLE001 - a scrape must not fail because the broker blinked
                family.add_metric([queue], float("nan"))
        yield family


MODEL_TTFT = Histogram(
    "orchestrion_model_ttft_seconds", "Time to first token per deployment", ["deployment"], buckets=LATENCY_BUCKETS
)
MODEL_TOKENS = Counter(
    "orchestrion_model_tokens_total", "Tokens in and out per deployment", ["deployment", "direction"]
)
MODEL_IN_FLIGHT = Gauge(
    "orchestrion_model_in_flight", "Model calls in flight per deployment", ["deployment"], multiprocess_mode="livesum"
)
ROUTING_DECISIONS = Counter("orchestrion_routing_decisions_total", "Router decisions", ["tier", "stage"])
MODEL_CACHE = Counter("orchestrion_model_cache_total", "Response cache lookups", ["result"])


@dataclass(frozen=True)
class ModelMetrics:
    ttft: Histogram
    tokens: Counter
    in_flight: Gauge
    decisions: Counter
    cache: Counter


def model_metrics() -> ModelMetrics:
    return ModelMetrics(MODEL_TTFT, MODEL_TOKENS, MODEL_IN_FLIGHT, ROUTING_DECISIONS, MODEL_CACHE)
