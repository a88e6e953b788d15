"""Spans are exported where settings say, and a worker's task span joins the producer's trace."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.settings import Settings
from observability.tracing import init_tracing
from tests.conftest import WorkerHandle
from tests.otlp_receiver import OtlpReceiver
from workers.instrumentation import instrument_producer


def test_without_keys_or_endpoint_spans_go_to_the_trace_file(tmp_path: Path) -> None:
    tracing = init_tracing(Settings(data_dir=tmp_path), "test")
    with tracing.langfuse.start_as_current_observation(name="to-file"):
        pass
    tracing.shutdown()

    assert "file" in tracing.destination
    spans = [json.loads(line) for line in (tmp_path / "traces" / "spans.jsonl").read_text().splitlines()]
    assert [s["name"] for s in spans] == ["to-file"]


def test_otlp_endpoint_receives_spans(tmp_path: Path, otlp: OtlpReceiver) -> None:
    name = f"otlp-{uuid.uuid4().hex[:6]}"
    settings = Settings(data_dir=tmp_path, langfuse={"otlp_endpoint": f"{otlp.url}/v1/traces"})
    tracing = init_tracing(settings, "test")
    with tracing.langfuse.start_as_current_observation(name=name):
        pass
    tracing.shutdown()

    [span] = otlp.wait_for(lambda s: s.name == name)
    assert span.service == "orchestrion-test"


def test_langfuse_keys_send_spans_to_the_langfuse_otel_endpoint(tmp_path: Path, otlp: OtlpReceiver) -> None:
    name = f"lf-{uuid.uuid4().hex[:6]}"
    settings = Settings(
        data_dir=tmp_path,
        langfuse={"public_key": f"pk-{name}", "secret_key": "sk-test", "base_url": otlp.url},
    )
    tracing = init_tracing(settings, "test")
    with tracing.langfuse.start_as_current_observation(name=name):
        pass
    tracing.shutdown()

    [span] = otlp.wait_for(lambda s: s.name == name)
    assert span.path == "/api/public/otel/v1/traces"
    assert span.authorization.startswith("Basic ")  # the real SDK's auth, to a local receiver


def test_worker_task_span_joins_the_producer_trace(celery_worker: WorkerHandle, otlp: OtlpReceiver) -> None:
    exporter = InMemorySpanExporter()
    tracing = init_tracing(celery_worker.settings, "producer", span_exporter=exporter)
    shared = trace.get_tracer_provider()  # the process's first provider: the one the send span is made with
    if shared is not tracing.provider:
        shared.add_span_processor(SimpleSpanProcessor(exporter))  # type: ignore[attr-defined]
    instrument_producer()
    with tracing.langfuse.start_as_current_observation(name="request") as request_span:
        trace_id = request_span.trace_id
        answer = celery_worker.app.send_task("orchestrion.ping", args=[{"trace": trace_id}]).get(timeout=30)
    tracing.flush()

    [producer_span] = [s for s in exporter.get_finished_spans() if s.name == "request"]
    [send_span] = [s for s in exporter.get_finished_spans() if s.name == "send orchestrion.ping"]
    assert answer["trace_id"] == trace_id  # the task ran inside the producer's trace
    assert send_span.parent is not None and send_span.parent.span_id == producer_span.context.span_id
    [task_span] = otlp.wait_for(lambda s: s.trace_id == trace_id and s.name == "task orchestrion.ping")
    assert task_span.parent_span_id == format(send_span.context.span_id, "016x")  # under the enqueue
    assert task_span.service == "orchestrion-worker"
