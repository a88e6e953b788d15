"""The figures `orchestrion top` shows, computed from Prometheus text: no network, no terminal.

A scrape is one endpoint's samples at one moment. Counters and histograms become increases between two
scrapes of the same endpoint (a restart's reset counts from zero, as PromQL's `increase` does), gauges keep
their latest value; then endpoints are summed, except gauges every process reads from shared state at
scrape (queue depth, circuit state), of which one copy is kept. Quantiles are interpolated in histogram
buckets as PromQL's `histogram_quantile` does. The metric names are docs/OBSERVABILITY.md's catalogue.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]
Key = tuple[str, Labels]  # a sample's name (with _bucket, _count, _total) and its sorted labels
Samples = dict[Key, float]
Totals = dict[str, float]

HTTP_REQUESTS = "orchestrion_http_requests_total"
HTTP_DURATION = "orchestrion_http_request_duration_seconds"
HTTP_IN_FLIGHT = "orchestrion_http_in_flight"
HTTP_REJECTIONS = "orchestrion_http_rejections_total"
SSE_STREAMS = "orchestrion_sse_streams_active"
RUN_DURATION = "orchestrion_run_duration_seconds"
MODEL_TTFT = "orchestrion_model_ttft_seconds"
MODEL_LATENCY = "orchestrion_model_latency_seconds"
MODEL_TOKENS = "orchestrion_model_tokens_total"
MODEL_TOKENS_PER_SECOND = "orchestrion_model_tokens_per_second"
MODEL_ERRORS = "orchestrion_model_errors_total"
MODEL_IN_FLIGHT = "orchestrion_model_in_flight"
MODEL_CIRCUIT_OPEN = "orchestrion_model_circuit_open"
MODEL_COST = "orchestrion_model_cost_usd_total"
QUEUE_DEPTH = "orchestrion_queue_depth"
TASK_WAIT = "orchestrion_celery_task_wait_seconds"
TASK_DURATION = "orchestrion_celery_task_duration_seconds"
SHARED_STATE_GAUGES = frozenset({QUEUE_DEPTH, MODEL_CIRCUIT_OPEN})  # the same broker value from every process


@dataclass(frozen=True)
class Scrape:
    """One endpoint's samples; `gauges` names the samples that are values now rather than running totals."""

    at: float
    samples: Samples
    gauges: frozenset[str]


def parse(text: str, at: float) -> Scrape:
    """Prometheus text exposition -> a scrape. Raises ValueError on text that is not one."""
    samples: Samples = {}
    gauges: set[str] = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_gsum", "_gcount")) or math.isnan(sample.value):
                continue  # creation times are not figures; NaN is a value its collector could not read
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = float(sample.value)
            if family.type in ("gauge", "unknown"):
                gauges.add(sample.name)
    return Scrape(at, samples, frozenset(gauges))


def increase(after: Scrape, before: Scrape | None) -> Samples:
    """Counters and histograms as their increase since `before` (all of it without one); gauges as now."""
    if before is None:
        return dict(after.samples)
    window: Samples = {}
    for key, value in after.samples.items():
        if key[0] in after.gauges:
            window[key] = value
        else:
            earlier = before.samples.get(key, 0.0)
            window[key] = value - earlier if value >= earlier else value  # a reset: the process restarted
    return window


def combine(windows: Iterable[Samples]) -> Samples:
    total: Samples = {}
    for window in windows:
        for key, value in window.items():
            if key[0] in SHARED_STATE_GAUGES:
                total[key] = max(total.get(key, value), value)
            else:
                total[key] = total.get(key, 0.0) + value
    return total


def histogram_quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket counts keyed by upper bound (+Inf included).

    None when there is nothing to rank (no observations, or no +Inf bucket to count them by)."""
    bounds = sorted(buckets)
    if len(bounds) < 2 or bounds[-1] != math.inf:
        return None
    counts = [buckets[b] for b in bounds]
    for i in range(1, len(counts)):  # buckets summed over scrapes of restarted processes may dip: as PromQL
        counts[i] = max(counts[i], counts[i - 1])
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    b = next(i for i, c in enumerate(counts) if c >= rank)
    if b == len(bounds) - 1:
        return bounds[-2]  # in the +Inf bucket: the highest finite bound is all that is known
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    start, below = (0.0, 0.0) if b == 0 else (bounds[b - 1], counts[b - 1])
    return start + (bounds[b] - start) * (rank - below) / (counts[b] - below)


def sum_by(
    samples: Samples, name: str, by: str, where: Callable[[dict[str, str]], bool] | None = None
) -> dict[str, float]:
    """`sum by (by) (name)`; samples without the label are left out."""
    totals: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        group = dict(labels).get(by) if sample == name else None
        if group is not None and (where is None or where(dict(labels))):
            totals[group] += value
    return dict(totals)


def quantiles_by(samples: Samples, histogram: str, by: str, q: float) -> dict[str, float | None]:
    buckets: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (sample, labels), value in samples.items():
        if sample != f"{histogram}_bucket":
            continue
        found = dict(labels)
        if by in found and "le" in found:
            buckets[found[by]][float(found["le"])] += value
    return {group: histogram_quantile(q, counts) for group, counts in buckets.items()}


@dataclass(frozen=True)
class Column:
    title: str
    kind: str  # seconds | rate | count | ratio | usd | number | circuit


Shown = tuple[Column, Mapping[str, float | None]]  # a column and its value per row key


@dataclass(frozen=True)
class Table:
    title: str
    key: str
    columns: tuple[Column, ...]
    rows: list[tuple[str, list[float | None]]] = field(default_factory=list)


def _table(title: str, key: str, columns: list[Shown]) -> Table:
    """Rows are every key any column knows; a column without that key (its metric absent) is None."""
    names = sorted({k for _, values in columns for k in values})
    rows = [(name, [values.get(name) for _, values in columns]) for name in names]
    return Table(title, key, tuple(c for c, _ in columns), rows)


@dataclass(frozen=True)
class Figures:
    """What one frame shows. `seconds` is the window rates are over; None: cumulative since each process began."""

    seconds: float | None
    tables: list[Table]


def figures(window: Samples, seconds: float | None, totals: Samples | None = None) -> Figures:
    """The frame's tables from a window of samples (`increase`d and `combine`d); `totals`, the cumulative
    samples, add spend so far next to its rate."""
    live = seconds is not None and seconds > 0

    def counted(values: Totals, title: str) -> Shown:
        if live:
            assert seconds is not None
            return Column(f"{title}/s", "rate"), {k: v / seconds for k, v in values.items()}
        return Column(title, "count"), dict(values)

    return Figures(
        seconds if live else None,
        [
            _models(window, counted),
            _http(window, counted),
            _api_now(window),
            _table("429s by reason", "reason", [counted(sum_by(window, HTTP_REJECTIONS, "reason"), "429s")]),
            _queues(window, counted),
            _runs(window, counted),
            _cost(window, seconds if live else None, totals if totals is not None else window),
        ],
    )


Counted = Callable[[Totals, str], Shown]


def _latency(samples: Samples, histogram: str, by: str, title: str) -> list[Shown]:
    return [
        (Column(f"{title} p50", "seconds"), quantiles_by(samples, histogram, by, 0.5)),
        (Column(f"{title} p99", "seconds"), quantiles_by(samples, histogram, by, 0.99)),
    ]


def _models(w: Samples, counted: Counted) -> Table:
    by = "deployment"
    return _table(
        "Models by deployment",
        by,
        [
            counted(sum_by(w, f"{MODEL_LATENCY}_count", by), "calls"),
            *_latency(w, MODEL_TTFT, by, "TTFT"),
            *_latency(w, MODEL_LATENCY, by, "latency"),
            counted(sum_by(w, MODEL_TOKENS, by, lambda labels: labels.get("direction") == "out"), "out tokens"),
            (Column("tok/s p50", "number"), quantiles_by(w, MODEL_TOKENS_PER_SECOND, by, 0.5)),
            counted(sum_by(w, MODEL_ERRORS, by), "errors"),
            (Column("in flight", "count"), sum_by(w, MODEL_IN_FLIGHT, by)),
            (Column("circuit", "circuit"), sum_by(w, MODEL_CIRCUIT_OPEN, by)),
        ],
    )


def _http(w: Samples, counted: Counted) -> Table:
    by = "route"
    requests = sum_by(w, HTTP_REQUESTS, by)
    errors = sum_by(w, HTTP_REQUESTS, by, lambda labels: labels.get("status", "").startswith("5"))
    return _table(
        "HTTP by route",
        by,
        [
            counted(requests, "requests"),
            *_latency(w, HTTP_DURATION, by, "latency"),
            (Column("5xx", "ratio"), {r: errors.get(r, 0.0) / n for r, n in requests.items() if n > 0}),
        ],
    )


def _api_now(w: Samples) -> Table:
    now = {"requests in flight": _total(w, HTTP_IN_FLIGHT), "SSE streams open": _total(w, SSE_STREAMS)}
    return Table("API now", "", (Column("", "count"),), [(k, [v]) for k, v in now.items()])


def _total(samples: Samples, name: str) -> float | None:
    values = [v for (sample, _), v in samples.items() if sample == name]
    return sum(values) if values else None


def _queues(w: Samples, counted: Counted) -> Table:
    by = "queue"
    return _table(
        "Queues",
        by,
        [
            (Column("depth", "count"), sum_by(w, QUEUE_DEPTH, by)),
            counted(sum_by(w, f"{TASK_WAIT}_count", by), "started"),
            *_latency(w, TASK_WAIT, by, "wait"),
            (Column("run p99", "seconds"), quantiles_by(w, TASK_DURATION, by, 0.99)),
        ],
    )


def _runs(w: Samples, counted: Counted) -> Table:
    by = "outcome"
    return _table(
        "Runs by outcome",
        by,
        [counted(sum_by(w, f"{RUN_DURATION}_count", by), "runs"), *_latency(w, RUN_DURATION, by, "duration")],
    )


def _cost(w: Samples, seconds: float | None, totals: Samples) -> Table:
    by = "tenant"
    columns: list[Shown] = [(Column("spent", "usd"), sum_by(totals, MODEL_COST, by))]
    if seconds:
        columns.append(
            (Column("per hour", "usd"), {k: v * 3600 / seconds for k, v in sum_by(w, MODEL_COST, by).items()})
        )
    return _table("Cost by tenant", by, columns)
