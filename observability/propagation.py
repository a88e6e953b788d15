"""W3C trace context in and out of plain dict carriers (message headers, HTTP headers)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")


def inject_current(carrier: MutableMapping[str, Any]) -> None:
    """Write the current span's traceparent (and tracestate) into `carrier`, if a span is active."""
    _W3C.inject(carrier)


@contextmanager
def attached_from(carrier: Mapping[str, Any]) -> Iterator[None]:
    """Make the trace context carried in `carrier` current for the block."""
    token = context.attach(_W3C.extract({k: carrier[k] for k in TRACE_HEADERS if carrier.get(k)}))
    try:
        yield
    finally:
        context.detach(token)


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None
