"""Orchestrion's records in the shapes `langgraph_sdk` 0.4 reads (its schema.py: Assistant, Thread, Run, ...)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from fastapi.responses import Response

from graphs.events import to_json
from graphs.orchestration import GRAPH_NAME
from graphs.runner import checkpoint_thread
from graphs.runs import RunRecord, ThreadRecord

# The one graph's assistant id is stable across processes and deployments (a uuid5 of its name).
ASSISTANT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, f"orchestrion:{GRAPH_NAME}"))
_EPOCH = "2026-01-01T00:00:00+00:00"


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(to_json(value), status_code=status, media_type="application/json", headers=headers)


def public(value: Any, tenant: str, thread_id: str) -> bytes:
    """`value` as JSON, the checkpointer's thread id (which holds the tenant) replaced by the client's."""
    return to_json(value).replace(to_json(checkpoint_thread(tenant, thread_id)), to_json(thread_id))


def assistant_view() -> dict[str, Any]:
    return {
        "assistant_id": ASSISTANT_ID,
        "graph_id": GRAPH_NAME,
        "name": GRAPH_NAME,
        "description": "Plans, retrieves from the tenant's documents, runs tools, answers with citations.",
        "config": {},
        "context": {},
        "metadata": {"created_by": "system"},
        "version": 1,
        "created_at": _EPOCH,
        "updated_at": _EPOCH,
    }


def thread_view(thread: ThreadRecord, values: Any = None, interrupts: Any = None) -> dict[str, Any]:
    return {
        "thread_id": thread.thread_id,
        "created_at": iso(thread.created_at),
        "updated_at": iso(thread.updated_at),
        "metadata": thread.metadata,
        "status": thread.status,
        "values": values if values is not None else {},
        "interrupts": interrupts or {},
    }


def run_view(run: RunRecord) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id or ASSISTANT_ID,
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "status": run.status,
        "metadata": run.metadata,
        "multitask_strategy": run.multitask_strategy,
        "cancel_reason": run.cancel_reason,
        "kwargs": {
            "input": run.input,
            "command": run.command,
            **run.options,
        },
        "error": run.error or None,
        "trace_id": run.trace_id,  # the run's trace: the spans of every process that executed it
    }
