"""The worker side of fair dispatch (workers/fair_queue.py): which tasks go through it, and when to dispatch.

A worker dispatches a queue's next jobs as it starts one of its tasks (a place in Celery just freed), and
each worker's main process sweeps every SWEEP_S: a dispatch that failed, a dispatcher that died with jobs
taken, or a worker that died between taking a message and starting it would otherwise leave jobs in their
backlogs with nobody to send them.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from celery import Celery, signals

from core.settings import Settings, get_settings
from workers.app import INGEST_TASK, RUN_TASK
from workers.fair_queue import FairQueue

log = logging.getLogger(__name__)
SWEEP_S = 2.0
_lock = threading.Lock()
_queues: dict[tuple[int, str], FairQueue] = {}


@dataclass(frozen=True)
class FairTask:
    queue: str
    ahead: int  # tasks kept waiting in Celery; the rest wait in per-tenant backlogs
    job_id_is_task_id: bool = False


def fair_tasks(settings: Settings) -> dict[str, FairTask]:
    """Every task dispatched fairly by tenant, by name. A queue's tasks wait in per-tenant backlogs once a
    producer pushes them (FairQueue.push)."""
    return {
        INGEST_TASK: FairTask("ingest", settings.rag.ingest_dispatch_ahead),
        RUN_TASK: FairTask("runs", settings.runs.dispatch_ahead, job_id_is_task_id=True),
    }


def open_fair_queue(app: Celery, task: str, settings: Settings) -> FairQueue:
    spec = fair_tasks(settings)[task]
    return FairQueue(app, spec.queue, task, spec.ahead, job_id_is_task_id=spec.job_id_is_task_id)


def fair_queue(app: Celery, task: str, settings: Settings) -> FairQueue:
    """This process's FairQueue of `task` (made after a pool fork, never shared with the parent)."""
    with _lock:
        key = (os.getpid(), task)
        if key not in _queues:
            _queues[key] = open_fair_queue(app, task, settings)
        return _queues[key]


def _on_task_start(sender: Any = None, **_: Any) -> None:
    settings = get_settings()
    if sender is not None and sender.name in fair_tasks(settings):
        fair_queue(sender.app, sender.name, settings).dispatch_quietly()


def _sweep(app: Celery, stop: threading.Event) -> None:
    settings = get_settings()
    while not stop.wait(SWEEP_S):
        for task in fair_tasks(settings):
            fair_queue(app, task, settings).dispatch_quietly()


def _start_sweeper(sender: Any = None, **_: Any) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=_sweep, args=(sender.app, stop), name="fair-dispatch-sweep", daemon=True)
    thread.start()
    signals.worker_shutdown.connect(lambda **_: stop.set(), weak=False, dispatch_uid="orchestrion-fair-sweep-stop")


def connect_worker_hooks() -> None:
    """Connecting twice is harmless: receivers are keyed by dispatch_uid."""
    signals.task_prerun.connect(_on_task_start, weak=False, dispatch_uid="orchestrion-fair-dispatch")
    signals.worker_ready.connect(_start_sweeper, weak=False, dispatch_uid="orchestrion-fair-sweep")
