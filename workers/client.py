"""The producer side of the queues, for adapters (API, MCP, CLI) that submit work."""

from __future__ import annotations

from core.settings import Settings
from core.stack import resolve_endpoints
from rag.services import RagServices, open_rag
from workers.app import INGEST_TASK, create_celery_app, queue_depth
from workers.instrumentation import instrument_producer


class QueueClient:
    def __init__(self, settings: Settings, redis_url: str) -> None:
        self.app = create_celery_app(settings, redis_url)
        instrument_producer()

    def enqueue_ingest(self, job_id: str) -> None:
        self.app.send_task(INGEST_TASK, args=[job_id])

    def ingest_depth(self) -> int:
        return queue_depth(self.app, "ingest")


def open_rag_with_queue(settings: Settings, serving: bool = False) -> tuple[RagServices, QueueClient]:
    queue = QueueClient(settings, resolve_endpoints(settings).redis_url)
    rag = open_rag(settings, enqueue=queue.enqueue_ingest, serving=serving)
    return rag, queue
