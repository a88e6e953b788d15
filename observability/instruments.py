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
    "orchestrion_http_request_duration_seconds",
    "HTTP request latency, to the response's last byte",
    ["method", "route", "status"],
    buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge("orchestrion_http_in_flight", "HTTP requests being answered", multiprocess_mode="livesum")
HTTP_REJECTIONS = Counter("orchestrion_http_rejections_total", "Requests refused with 429, by why", ["reason"])
SSE_STREAMS = Gauge("orchestrion_sse_streams_active", "Server-sent event streams open", multiprocess_mode="livesum")

RUN_DURATION = Histogram(
    "orchestrion_run_duration_seconds", "A run's time on workers", ["graph", "outcome"], buckets=LATENCY_BUCKETS
)
RUN_STEPS = Histogram(
    "orchestrion_run_steps", "Plan steps a run executed", ["graph", "outcome"], buckets=(0, 1, 2, 3, 5, 8, 13, 21, 34)
)
RUN_REPLANS = Counter("orchestrion_run_replans_total", "Times a planner was asked again", ["graph"])
RUN_BUDGET_STOPS = Counter("orchestrion_run_budget_stops_total", "Runs stopped by a budget", ["graph", "budget"])
RUN_INTERRUPTS = Counter("orchestrion_run_interrupts_total", "Runs paused for a human", ["graph"])

TASKS = Counter("orchestrion_celery_tasks_total", "Celery tasks finished", ["task", "state"])
TASK_LATENCY = Histogram(
    "orchestrion_celery_task_duration_seconds", "Celery task run time", ["task", "queue"], buckets=LATENCY_BUCKETS
)
TASK_WAIT = Histogram(
    "orchestrion_celery_task_wait_seconds", "Enqueue to start of a Celery task", ["task", "queue"],
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
TASK_RETRIES = Counter("orchestrion_celery_task_retries_total", "Celery task retries asked for", ["task"])
TASK_REDELIVERIES = Counter(
    "orchestrion_celery_task_redeliveries_total", "Tasks delivered again after a worker died", ["task", "queue"]
)
DEAD_LETTERS = Counter("orchestrion_dead_letters_total", "Work given up after too many deliveries", ["kind"])
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
    "orchestrion_model_ttft_seconds", "Time to first token", ["deployment", "tier"], buckets=LATENCY_BUCKETS
)
MODEL_LATENCY = Histogram(
    "orchestrion_model_latency_seconds", "A whole model call", ["deployment", "tier"], buckets=LATENCY_BUCKETS
)
MODEL_TOKENS = Counter("orchestrion_model_tokens_total", "Tokens in and out", ["deployment", "tier", "direction"])
MODEL_TOKEN_RATE = Histogram(
    "orchestrion_model_tokens_per_second", "Output tokens over the time after the first token", ["deployment", "tier"],
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)  # fmt: skip
MODEL_ERRORS = Counter("orchestrion_model_errors_total", "Failed model calls", ["deployment", "type"])
MODEL_COST = Counter("orchestrion_model_cost_usd_total", "Model spend in US dollars", ["tenant", "deployment"])
MODEL_IN_FLIGHT = Gauge(
    "orchestrion_model_in_flight", "Model calls in flight per deployment", ["deployment"], multiprocess_mode="livesum"
)
ROUTING_DECISIONS = Counter("orchestrion_routing_decisions_total", "Router decisions", ["tier", "stage"])
MODEL_CACHE = Counter("orchestrion_model_cache_total", "Response cache lookups", ["result"])


@dataclass(frozen=True)
class ModelMetrics:
    ttft: Histogram
    latency: Histogram
    tokens: Counter
    token_rate: Histogram
    errors: Counter
    cost: Counter
    in_flight: Gauge
    decisions: Counter
    cache: Counter


def model_metrics() -> ModelMetrics:
    return ModelMetrics(MODEL_TTFT, MODEL_LATENCY, MODEL_TOKENS, MODEL_TOKEN_RATE, MODEL_ERRORS, MODEL_COST,
                        MODEL_IN_FLIGHT, ROUTING_DECISIONS, MODEL_CACHE)  # fmt: skip


class CircuitCollector(Collector):
    """Each deployment's circuit, read from the fleet's shared state at scrape time (given by the caller)."""

    def __init__(self, states: dict[str, str]) -> None:
        self._states = states

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "orchestrion_model_circuit_open",
            "1 while a deployment's circuit is open or half-open",
            labels=["deployment"],
        )
        for deployment, status in sorted(self._states.items()):
            family.add_metric([deployment], 0.0 if status == "closed" else 1.0)
        yield family
