"""The Celery app: Redis broker and results, named queues, at-least-once delivery."""

from __future__ import annotations

from celery import Celery
from kombu.entity import Queue

from core.settings import Settings
from workers.fair_queue import backlog_size

TASK_ROUTES = {
    "orchestrion.ingest.*": {"queue": "ingest"},
    "orchestrion.tools.*": {"queue": "tools"},
    "orchestrion.runs.*": {"queue": "runs"},
}
DEFAULT_QUEUE = "default"
INGEST_TASK = "orchestrion.ingest.document"
TOOL_TASK = "orchestrion.tools.call"
RUN_TASK = "orchestrion.runs.execute"
UNACKED_SWEEP_S = 5


def create_celery_app(settings: Settings, redis_url: str) -> Celery:
    cfg = settings.celery
    # Every key (queues, results, unacked set) carries the prefix, so deployments or
    # test sessions sharing one Redis never see each other's tasks.
    transport: dict[str, object] = {
        "visibility_timeout": cfg.visibility_timeout_s,
        "global_keyprefix": f"{settings.redis.key_prefix}:",
        # How often a worker looks for tasks whose visibility timeout ran out (a dead worker's).
        # kombu's default looks every 10 s but scans only every 10th time, so a task came back up
        # to 100 s late; one ZRANGE on the unacked index every few seconds costs nothing.
        "unacked_restore_interval": UNACKED_SWEEP_S,
        "unacked_restore_throttle": 1,
    }
    app = Celery(
        "orchestrion",
        broker=redis_url,
        backend=redis_url,
        include=["workers.tasks", "workers.tool_tasks", "workers.run_tasks"],
    )
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        # At-least-once: a task is acknowledged after it ran, and a worker that dies
        # mid-task has it redelivered. Tasks must therefore be idempotent.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_time_limit=cfg.task_time_limit_s,
        task_soft_time_limit=cfg.task_soft_time_limit_s,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        task_queues=[Queue(name) for name in dict.fromkeys([*cfg.queues, DEFAULT_QUEUE])],  # type: ignore[no-untyped-call]
        task_default_queue=DEFAULT_QUEUE,
        task_routes=TASK_ROUTES,
        task_track_started=True,
        result_expires=7 * 24 * 3600,
        worker_hijack_root_logger=False,
        # Pool processes load the embedding model at start (see workers/process.py); the
        # default 4 s to report alive would kill them while torch imports.
        worker_proc_alive_timeout=180,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


def queue_depth(app: Celery, queue: str) -> int:
    """Tasks waiting in `queue`, in Celery and in the fair queue's backlogs (workers/fair_queue.py), not
    counting those a worker holds unacknowledged."""
    # A pooled connection: this runs on every ingest submission and every /metrics scrape,
    # and a fresh connection costs a connect, a channel and a PING each time.
    with app.pool.acquire(block=True) as conn:
        client = conn.default_channel.client  # prefixes keys with global_keyprefix itself
        return int(client.llen(queue)) + backlog_size(client, queue)


def worker_answers(app: Celery, hostname: str, timeout: float = 1.0) -> bool:
    """True when the worker named `hostname` answers a broadcast ping."""
    replies = app.control.ping(destination=[hostname], timeout=timeout)
    return any(hostname in reply for reply in replies)
