"""W3C trace context in and out of plain dict carriers (message headers, HTTP headers)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_W3C = TraceContextTextMapPropagator()
TRACE_HEADERS = ("traceparent", "tracestate")


def inject_current(carrier: MutableMapping[str, Any], of: context.Context | None = None) -> None:
    """Write the current span's (or the span of `of`'s) traceparent and tracestate into `carrier`."""
    _W3C.inject(carrier, of)


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


def current_traceparent() -> str | None:
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    return carrier.get("traceparent")


def parent_for(traceparent: str | None) -> tuple[context.Context | None, list[trace.Link]]:
    """Where a span of a long-lived thing (a run) goes: under the current span when that is in the thing's own
    trace (its first execution), else under the span it began in (a resume after an approval or a crash),
    linked to the current one, so one run is one trace however many processes executed it."""
    current = trace.get_current_span().get_span_context()
    if not traceparent:
        return None, []
    origin = _W3C.extract({"traceparent": traceparent})
    origin_span = trace.get_current_span(origin).get_span_context()
    if not origin_span.is_valid or (current.is_valid and current.trace_id == origin_span.trace_id):
        return None, []
    return origin, [trace.Link(current)] if current.is_valid else []
