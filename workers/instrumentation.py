"""Celery signals that carry the trace across the queue and record task metrics.

The producer marks the enqueue with a `send <task>` span (kind PRODUCER) and writes its
W3C traceparent and the send time into the message headers; the worker makes that span
the parent of the task's span, so a task is one step of the request's trace, and the gap
between the two spans (also the `orchestrion_celery_task_wait_seconds` histogram) is the
time the task waited in its queue.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, ExitStack
from typing import Any

from celery import Celery, signals
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from core.settings import Settings
from observability.propagation import TRACE_HEADERS, attached_from, inject_current
from observability.tracing import Tracing, init_tracing

SENT_AT = "orchestrion_sent_at"  # a message header: wall-clock seconds (the worker may be on another host)


class _TaskTracer:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.tracing: Tracing | None = None
        self._open: dict[str, tuple[ExitStack, float]] = {}

    def start_process(self, **_: Any) -> None:
        # Exporter threads do not survive fork: each pool process starts its own.
        self.tracing = init_tracing(self._settings, "worker")

    def stop_process(self, **_: Any) -> None:
        if self.tracing is not None:
            self.tracing.shutdown()

    def before_start(self, task_id: str, task: Any, **_: Any) -> None:
        from observability.instruments import TASK_REDELIVERIES, TASK_WAIT

        queue = _queue_of(task)
        sent_at = getattr(task.request, SENT_AT, None)
        if (getattr(task.request, "delivery_info", None) or {}).get("redelivered"):
            TASK_REDELIVERIES.labels(task.name, queue).inc()  # its send time is its first send: no wait figure
        elif isinstance(sent_at, int | float):
            TASK_WAIT.labels(task.name, queue).observe(max(0.0, time.time() - sent_at))
        stack = ExitStack()
        carrier = {name: getattr(task.request, name, None) for name in TRACE_HEADERS}
        stack.enter_context(attached_from(carrier))
        try:
            if self.tracing is not None:
                span: AbstractContextManager[Any] = self.tracing.langfuse.start_as_current_observation(
                    name=f"task {task.name}", metadata={"task_id": task_id, "queue": queue}
                )
                stack.enter_context(span)
        except BaseException:
            stack.close()  # Celery swallows a signal handler's error: the attached context must not outlive it
            raise
        self._open[task_id] = (stack, time.perf_counter())

    def after_run(self, task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
        from observability.instruments import TASK_LATENCY, TASKS

        opened = self._open.pop(task_id, None)
        if opened is None:
            return
        stack, started = opened
        TASK_LATENCY.labels(task.name, _queue_of(task)).observe(time.perf_counter() - started)
        TASKS.labels(task.name, state or "UNKNOWN").inc()
        stack.close()


def _queue_of(task: Any) -> str:
    info = getattr(task.request, "delivery_info", None) or {}
    return str(info.get("routing_key", ""))


def _on_publish(
    sender: str | None = None, headers: dict[str, Any] | None = None, routing_key: str | None = None, **_: Any
) -> None:
    if headers is None:
        return
    # Ended at once: it marks the enqueue (publishing itself is a Redis round trip), and a span held until
    # after_task_publish would leak whenever the publish raised.
    span = trace.get_tracer("orchestrion.celery").start_span(
        f"send {sender}",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "celery",
            "messaging.destination.name": routing_key or "",
            "messaging.message.id": str(headers.get("id", "")),
        },
    )
    span.end()
    inject_current(headers, trace.set_span_in_context(span))
    headers[SENT_AT] = time.time()


def _on_retry(sender: Any = None, **_: Any) -> None:
    from observability.instruments import TASK_RETRIES

    TASK_RETRIES.labels(getattr(sender, "name", str(sender))).inc()


def instrument_producer() -> None:
    """Any process that sends tasks: its current trace goes along in the message headers.
    Connecting twice is harmless: Celery keys receivers by identity."""
    signals.before_task_publish.connect(_on_publish, weak=False, dispatch_uid="orchestrion-trace")


_tracer: _TaskTracer | None = None


def process_tracing() -> Tracing | None:
    """This pool process's tracing (made at its start), for its Host."""
    return _tracer.tracing if _tracer is not None else None


def instrument_worker(app: Celery, settings: Settings) -> None:
    global _tracer
    tracer = _tracer = _TaskTracer(settings)
    instrument_producer()  # tasks that send tasks keep the chain
    signals.worker_process_init.connect(tracer.start_process, weak=False)
    signals.worker_process_shutdown.connect(tracer.stop_process, weak=False)
    signals.task_prerun.connect(tracer.before_start, weak=False)
    signals.task_postrun.connect(tracer.after_run, weak=False)
    signals.task_retry.connect(_on_retry, weak=False)
    from workers.process import close_host, warm_up

    signals.worker_process_init.connect(warm_up, weak=False)
    signals.worker_process_shutdown.connect(close_host, weak=False)
