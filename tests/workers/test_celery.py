"""The queue path end to end, against a real Valkey and a real worker process."""

from __future__ import annotations

import uuid

import httpx

from core.settings import Settings
from tests.conftest import WorkerHandle
from workers.app import create_celery_app, queue_depth


def test_task_runs_on_a_real_worker_and_returns_its_result(celery_worker: WorkerHandle) -> None:
    payload = {"n": uuid.uuid4().hex}
    result = celery_worker.app.send_task("orchestrion.ping", args=[payload])

    answer = result.get(timeout=30)

    assert answer["echo"] == payload
    assert answer["worker"] == celery_worker.hostname
    assert result.state == "SUCCESS"


def test_tasks_are_routed_to_their_named_queues(celery_worker: WorkerHandle) -> None:
    router = celery_worker.app.amqp.router
    assert router.route({}, "orchestrion.ingest.document")["queue"].name == "ingest"
    assert router.route({}, "orchestrion.tools.call")["queue"].name == "tools"
    assert router.route({}, "orchestrion.runs.execute")["queue"].name == "runs"
    assert router.route({}, "orchestrion.ping")["queue"].name == "default"


def test_delivery_settings_are_at_least_once_and_json_only(celery_worker: WorkerHandle) -> None:
    conf = celery_worker.app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"]
    assert conf.broker_transport_options["visibility_timeout"] > conf.task_time_limit


def test_queue_depth_counts_waiting_tasks(valkey: str, key_prefix: str) -> None:
    # A prefix no worker consumes: the tasks stay queued and must all be counted.
    app = create_celery_app(Settings(redis={"url": valkey, "key_prefix": key_prefix}), valkey)
    assert queue_depth(app, "ingest") == 0
    for i in range(3):
        app.send_task("orchestrion.ingest.document", args=[i])
    app.send_task("orchestrion.tools.call", args=[0])

    assert queue_depth(app, "ingest") == 3
    assert queue_depth(app, "tools") == 1


def test_worker_exports_task_metrics(celery_worker: WorkerHandle) -> None:
    celery_worker.app.send_task("orchestrion.ping", args=[{"for": "metrics"}]).get(timeout=30)

    body = httpx.get(celery_worker.metrics_url, timeout=10).text

    line = next(
        row
        for row in body.splitlines()
        if row.startswith("orchestrion_celery_tasks_total{") and 'task="orchestrion.ping"' in row
    )
    assert 'state="SUCCESS"' in line and float(line.rsplit(" ", 1)[1]) >= 1
    assert 'orchestrion_queue_depth{queue="ingest"}' in body
    assert "orchestrion_celery_task_duration_seconds_bucket" in body
