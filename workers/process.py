"""Per worker process resources, made on first use (after the pool forks, never at import)."""

from __future__ import annotations

import logging
import threading

from core.heap import freeze_startup_heap
from core.settings import get_settings
from rag.services import RagServices
from workers.client import open_rag_with_queue

log = logging.getLogger(__name__)
_lock = threading.Lock()
_services: RagServices | None = None


def rag_services() -> RagServices:
    global _services
    with _lock:
        if _services is None:
            settings = get_settings()
            _services, _ = open_rag_with_queue(settings)
        return _services


def warm_up(**_: object) -> None:
    """Connect and load the embedding model when a pool process starts, so the first task's
    time limit measures the task, not torch's import. Failure here is not fatal: the first
    task tries again and reports its own error."""
    try:
        rag_services().embedder.embed(["warm-up"])
        freeze_startup_heap()
    except Exception:
        log.warning("worker warm-up failed; the first task will retry", exc_info=True)
