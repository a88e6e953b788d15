"""Langfuse observations made as plain OpenTelemetry spans: a run, a graph node, a tool call, a retrieval.

The Langfuse SDK reads observations off span attributes (`langfuse.observation.*`), so the core needs no
Langfuse client to make one: the process's tracer provider (observability/tracing.py) exports them through
the Langfuse client's exporter, masked there (observability/masking.py). Without a provider they are no-ops.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode

_tracer = trace.get_tracer("orchestrion")
TYPE = "langfuse.observation.type"
INPUT = "langfuse.observation.input"
OUTPUT = "langfuse.observation.output"
METADATA = "langfuse.observation.metadata"
LEVEL = "langfuse.observation.level"
STATUS_MESSAGE = "langfuse.observation.status_message"
TRACE_TAGS = "langfuse.trace.tags"


class Observation:
    def __init__(self, span: Span) -> None:
        self.span = span

    def output(self, value: Any) -> None:
        self.span.set_attribute(OUTPUT, _json(value))

    def metadata(self, **values: Any) -> None:
        for key, value in values.items():
            if value is not None:
                self.span.set_attribute(f"{METADATA}.{key}", _json(value))

    def attributes(self, **values: Any) -> None:
        self.span.set_attributes({k: v for k, v in values.items() if v is not None})

    def tags(self, tags: Sequence[str]) -> None:
        self.span.set_attribute(TRACE_TAGS, list(tags))

    def failed(self, message: str) -> None:
        self.span.set_attributes({LEVEL: "ERROR", STATUS_MESSAGE: message})
        self.span.set_status(Status(StatusCode.ERROR, message))


@contextmanager
def observe(
    name: str,
    *,
    as_type: str = "span",
    input: Any = None,
    metadata: Mapping[str, Any] | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    context: Context | None = None,
    links: Sequence[Link] = (),
    control_flow: tuple[type[BaseException], ...] = (),
) -> Iterator[Observation]:
    """A span that Langfuse shows as an observation of `as_type` (span, agent, chain, tool, retriever...).

    An exception marks it failed, except `control_flow` ones (a graph interrupt) and cancellation, which are
    recorded as an event: a run waiting for an approval has not failed."""
    with _tracer.start_as_current_span(
        name, context=context, kind=kind, links=links, record_exception=False, set_status_on_exception=False
    ) as span:
        observation = Observation(span)
        span.set_attribute(TYPE, as_type)
        if input is not None:
            span.set_attribute(INPUT, _json(input))
        observation.metadata(**(metadata or {}))
        try:
            yield observation
        except control_flow as exc:
            span.add_event(type(exc).__name__)
            raise
        except Exception as exc:
            span.record_exception(exc)
            observation.failed(f"{type(exc).__name__}: {exc}"[:500])
            raise
        except BaseException as exc:  # cancelled: not a failure of this step
            span.add_event(type(exc).__name__)
            raise


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str, separators=(",", ":"))
