"""Per worker process resources, made on first use (after the pool forks, never at import)."""

from __future__ import annotations

import threading

from core.settings import get_settings
from rag.services import RagServices
from workers.client import open_rag_with_queue

_lock = threading.Lock()
_services: RagServices | None = None


def rag_services() -> RagServices:
    global _services
    with _lock:
        if _services is None:
            settings = get_settings()
            _services, _ = open_rag_with_queue(settings)
        return _services
