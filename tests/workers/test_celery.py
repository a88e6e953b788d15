"""The queue path end to end, against a real Valkey and a real worker process."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from kombu.exceptions import OperationalError

from core.settings import RedisSettings, Settings
from orchestrion.launcher import services
from orchestrion.launcher.ports import PortBook
from orchestrion.launcher.supervisor import launch
from tests.conftest import CONSOLE, WorkerHandle, free_port
from workers.app import create_celery_app, queue_depth
from workers.client import QueueClient


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
    # a dead worker's task comes back within seconds of its visibility timeout, not kombu's ~100 s
    options = conf.broker_transport_options
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 10


def test_queue_depth_counts_waiting_tasks(valkey: str, key_prefix: str) -> None:
    # A prefix no worker consumes: the tasks stay queued and must all be counted.
    app = create_celery_app(Settings(redis=RedisSettings(url=valkey, key_prefix=key_prefix)), valkey)
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


def test_producer_fails_fast_while_redis_is_down_and_publishes_again_once_it_is_back(
    tmp_path: Path, key_prefix: str
) -> None:
    # A Valkey of this test's own, stopped and started again on the same port and data dir; on any free port,
    # not the usual 6379, which another stack on this machine may take while this one is down.
    book = PortBook(tmp_path)
    book.prefer("redis", free_port())
    book.save()
    spec = services.redis_spec(Settings(data_dir=tmp_path), PortBook(tmp_path))
    url = spec.urls["redis_url"]
    queue = QueueClient(Settings(redis=RedisSettings(url=url, key_prefix=key_prefix)), url)
    valkey = launch(spec, tmp_path / "logs", CONSOLE)
    try:
        queue.enqueue_ingest("t", ["before"])
        valkey.stop()

        for attempt in range(2):
            started = time.monotonic()
            with pytest.raises(redis.ConnectionError):  # into the tenant's backlog first: refused at once
                queue.enqueue_ingest("t", [f"during-{attempt}"])
            with pytest.raises(OperationalError):  # and a publish of its own
                queue.app.send_task("orchestrion.ping", args=[{}], ignore_result=True)
            # The publish's own few retries, not (from the second on) ~19 s of reconnecting to a result store
            # nobody reads, ending in a RuntimeError that says the application must be restarted.
            assert time.monotonic() - started < 5

        valkey = launch(spec, tmp_path / "logs", CONSOLE)
        queue.enqueue_ingest("t", ["after"])
        # "before" survived the restart (AOF), "after" went out: both in Celery, under the dispatch bound (2).
        assert queue.ingest_depth() == 2 and queue.ingest.waiting() == 0
        with redis.Redis.from_url(url) as client:
            assert client.pubsub_channels() == []  # the producer waits on no task's result
    finally:
        valkey.stop()
        queue.app.close()
