"""One Langfuse client per process; its spans go to Langfuse, an OTLP endpoint or a file.

Everything Orchestrion traces goes through the Langfuse SDK, so the same
observations (spans, generations with TTFT and usage) appear in Langfuse when keys
are set and in any OTLP backend or a local JSON-lines file when they are not.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from langfuse import Langfuse
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from core.settings import Settings
from observability.masking import Masking

log = logging.getLogger(__name__)


class JsonLinesSpanExporter(SpanExporter):
    """Appends each finished span as one compact JSON object per line.

    Not the SDK's `to_json()`: that pretty-prints and repeats the process's resource in
    every span, which cost ~100 us of GIL time per span, a fifth of a search request's
    server time in bench/retrieval. The service name is kept; the rest of the resource is
    the same on every line of one process.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = "".join(json.dumps(_record(span), separators=(",", ":"), default=str) + "\n" for span in spans)
        with self._lock, self.path.open("a") as f:
            f.write(lines)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def _record(span: ReadableSpan) -> dict[str, object]:
    context, parent = span.context, span.parent
    return {
        "name": span.name,
        "trace_id": f"{context.trace_id:032x}" if context else None,
        "span_id": f"{context.span_id:016x}" if context else None,
        "parent_id": f"{parent.span_id:016x}" if parent else None,
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "service": span.resource.attributes.get("service.name"),
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "ns": e.timestamp, "attributes": dict(e.attributes or {})} for e in span.events],
    }


@dataclass
class Tracing:
    langfuse: Langfuse
    provider: TracerProvider
    destination: str

    def flush(self) -> None:
        self.provider.force_flush()

    def shutdown(self) -> None:
        self.langfuse.flush()
        self.provider.shutdown()


def init_tracing(settings: Settings, service: str, span_exporter: SpanExporter | None = None) -> Tracing:
    """Create the process's tracer provider and Langfuse client, and log where spans go."""
    lf = settings.langfuse
    exporter, destination = span_exporter, "the exporter given by the caller"
    if exporter is None and not lf.enabled:
        if lf.otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter, destination = OTLPSpanExporter(endpoint=lf.otlp_endpoint), f"OTLP/HTTP {lf.otlp_endpoint}"
        else:
            path = lf.trace_file or settings.data_dir / "traces" / "spans.jsonl"
            exporter, destination = JsonLinesSpanExporter(path), f"file {path} (set LANGFUSE_* keys for Langfuse)"
    elif exporter is None:
        destination = f"Langfuse at {lf.base_url}"

    provider = TracerProvider(resource=Resource.create({"service.name": f"orchestrion-{service}"}))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    # The SDK keeps one client per public key for the process's life; without real
    # keys each init gets a key of its own so it is not handed an older client's exporter.
    public_key = lf.public_key if lf.enabled else f"local-{service}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    secret_key = lf.secret_key.get_secret_value() if lf.secret_key and lf.enabled else "local"
    client = Langfuse(
        public_key=public_key,
        secret_key=secret_key,
        base_url=lf.base_url,
        environment=lf.environment,
        tracer_provider=provider,
        span_exporter=exporter,
        flush_interval=1.0,
        should_export_span=lambda span: True,  # our Celery and HTTP spans too, not only LLM ones
        mask_otel_spans=Masking.from_settings(settings).spans,  # wraps every exporter above: one place
    )
    log.info("tracing: spans go to %s", destination, extra={"service": service})
    return Tracing(langfuse=client, provider=provider, destination=destination)
