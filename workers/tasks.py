"""Celery tasks: thin, ids in, core code called, safe to run twice."""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from observability.propagation import current_trace_id


@shared_task(name="orchestrion.ping", bind=True)  # type: ignore[untyped-decorator]
def ping(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Echo: proves broker, worker, result backend and trace propagation end to end."""
    return {"echo": payload, "worker": self.request.hostname, "trace_id": current_trace_id()}
