"""The producer side of the queues, for adapters (API, MCP, CLI) that submit work."""

from __future__ import annotations

from collections.abc import Sequence

from core.settings import Settings
from core.stack import resolve_endpoints
from rag.services import RagServices, open_rag
from workers.app import INGEST_TASK, RUN_TASK, TOOL_TASK, create_celery_app, queue_depth
from workers.fair_dispatch import open_fair_queue
from workers.instrumentation import instrument_producer


class QueueClient:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.app = create_celery_app(settings, redis_url)
        instrument_producer()
        self.ingest = open_fair_queue(self.app, INGEST_TASK, settings)
        self.runs = open_fair_queue(self.app, RUN_TASK, settings)

    def enqueue_ingest(self, tenant: str, job_ids: Sequence[str]) -> None:
        """Into the tenant's backlog, all or none (raises when that fails); then as many as fit go to Celery.
        A failure to send them now loses nothing: they are in the backlog, and the next dispatch sends them."""
        self.ingest.push(tenant, job_ids)
        self.ingest.dispatch_quietly()

    def send_tool_call(self, call_id: str) -> None:
        # The Celery task id is the call id (run id + step id): the same step never makes a second task.
        self.app.send_task(TOOL_TASK, args=[call_id], task_id=call_id, ignore_result=True)

    def send_run(self, tenant: str, run_id: str) -> None:
        """Into the tenant's backlog of the runs queue (raises when that fails: the caller's recovery sends it
        again), then to Celery in the tenants' turns. Its task id is the run id: a run's task is found by its
        id, its trace links to the run, and a run sent twice executes once (its lease)."""
        self.runs.push(tenant, [run_id])
        self.runs.dispatch_quietly()

    def ingest_depth(self) -> int:
        return queue_depth(self.app, "ingest")


def open_rag_with_queue(settings: Settings, serving: bool = False) -> tuple[RagServices, QueueClient]:
    queue = QueueClient(settings, resolve_endpoints(settings).redis_url)
    rag = open_rag(settings, enqueue=queue.enqueue_ingest, serving=serving)
    return rag, queue
