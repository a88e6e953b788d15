"""The producer side of the queues, for adapters (API, MCP, CLI) that submit work."""

from __future__ import annotations

from core.settings import Settings
from core.stack import resolve_endpoints
from rag.services import RagServices, open_rag
from workers.app import INGEST_TASK, TOOL_TASK, create_celery_app, queue_depth
from workers.instrumentation import instrument_producer


class QueueClient:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.app = create_celery_app(settings, redis_url)
        instrument_producer()

    def enqueue_ingest(self, job_id: str) -> None:
        # The job store carries the job's state, so nobody reads the task's result. Without this, each publish
        # also subscribes this process to the result's channel (never read, never unsubscribed), and while Redis
        # is down it retries that subscription for about 19 s before failing with a RuntimeError that says to
        # restart the application; the worker would also keep every result in Redis for a week.
        self.app.send_task(INGEST_TASK, args=[job_id], ignore_result=True)

    def send_tool_call(self, call_id: str) -> None:
        # The Celery task id is the call id (run id + step id): the same step never makes a second task.
        self.app.send_task(TOOL_TASK, args=[call_id], task_id=call_id, ignore_result=True)

    def ingest_depth(self) -> int:
        return queue_depth(self.app, "ingest")


def open_rag_with_queue(settings: Settings, serving: bool = False) -> tuple[RagServices, QueueClient]:
    queue = QueueClient(settings, resolve_endpoints(settings).redis_url)
    rag = open_rag(settings, enqueue=queue.enqueue_ingest, serving=serving)
    return rag, queue
