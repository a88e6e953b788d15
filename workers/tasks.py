"""Celery tasks: thin, ids in, core code called, safe to run twice."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import redis
from celery import Task, shared_task
from weaviate.exceptions import WeaviateBaseError

from core.errors import NotFoundError
from observability.propagation import current_trace_id
from rag.jobs import FINAL_STATES, JobState, JobStore
from workers.app import INGEST_TASK
from workers.fair_dispatch import connect_worker_hooks

log = logging.getLogger(__name__)
# Worth another try: the service may be back in a moment. Deliberate errors (bad input,
# unknown tenant) are recorded on the job by the pipeline instead and never retried.
TRANSIENT = (redis.ConnectionError, redis.TimeoutError, WeaviateBaseError, httpx.TransportError, ConnectionError)
# This module is what a worker imports for its tasks: the fair queue's dispatch goes with them.
connect_worker_hooks()


@shared_task(name="orchestrion.ping", bind=True)  # type: ignore[untyped-decorator]
def ping(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Echo: proves broker, worker, result backend and trace propagation end to end."""
    return {"echo": payload, "worker": self.request.hostname, "trace_id": current_trace_id()}


class _IngestTask(Task):  # type: ignore[misc]
    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        from workers.process import rag_services

        job_id = args[0]
        try:
            record_gave_up(rag_services().jobs, job_id, exc)
        except (NotFoundError, *TRANSIENT):
            # The record expired, or Redis is what failed: the task's own failure is logged by Celery.
            log.warning("could not mark ingest job %s failed", job_id, exc_info=True)


def record_gave_up(jobs: JobStore, job_id: str, exc: BaseException) -> None:
    """Mark a job failed on an unexpected error or exhausted retries. The client reads a generic reason with
    the trace id; the exception (hosts, ports, driver messages) goes to the worker's log under that id."""
    log.error("ingest job %s gave up", job_id, exc_info=exc, extra={"job_id": job_id, "error": type(exc).__name__})
    status = jobs.load(job_id)
    if status.state not in FINAL_STATES:
        trace_id = current_trace_id()
        reason = "gave up after an internal error; retry later" + (f" (trace id {trace_id})" if trace_id else "")
        jobs.update(status, state=JobState.FAILED, error=reason)


@shared_task(
    name=INGEST_TASK,
    base=_IngestTask,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=60,
    retry_jitter=True,
    max_retries=6,
)  # type: ignore[untyped-decorator]
def ingest_document(job_id: str) -> dict[str, Any]:
    from workers.process import rag_services

    status = rag_services().ingest.run(job_id)
    return {"job_id": job_id, "state": status.state.value}
