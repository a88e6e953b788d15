"""Fair dispatch into Celery against a real Valkey: tenants take turns, a few tasks wait in Celery, nothing is
lost when a send fails, a purged queue holds no place. No worker consumes these queues: the test takes
messages off the broker list as a worker's BRPOP does, to decide when places free up."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery

from core.settings import RedisSettings, Settings
from tests.conftest import free_port
from workers.app import INGEST_TASK, create_celery_app, queue_depth
from workers.fair_queue import FairQueue, broker_key


@pytest.fixture
def app(valkey: str, key_prefix: str) -> Iterator[Celery]:
    made = create_celery_app(Settings(redis=RedisSettings(url=valkey, key_prefix=key_prefix)), valkey)
    yield made
    made.close()


def _fair(app: Celery, ahead: int, **options: object) -> FairQueue:
    return FairQueue(app, "ingest", INGEST_TASK, ahead, **options)  # type: ignore[arg-type]


def _job_id(message: bytes) -> str:
    return str(json.loads(base64.b64decode(json.loads(message)["body"]))[0][0])


def _in_broker(fair: FairQueue) -> list[str]:
    """Job ids in the broker list, first to be taken first (producers LPUSH, workers BRPOP)."""
    return [_job_id(m) for m in reversed(fair.redis.lrange(broker_key(fair.app, "ingest"), 0, -1))]


def _take(fair: FairQueue) -> str:
    """Take the next message as a worker does, and dispatch as a starting task does."""
    message = fair.redis.rpop(broker_key(fair.app, "ingest"))
    assert isinstance(message, bytes)
    fair.dispatch()
    return _job_id(message)


def test_a_tenant_that_joins_goes_next_and_tenants_take_turns(app: Celery) -> None:
    fair = _fair(app, ahead=2)
    fair.push("a", [f"a{i}" for i in range(6)])
    assert fair.dispatch() == 2
    assert _in_broker(fair) == ["a0", "a1"] and fair.waiting() == 4
    fair.push("b", ["b0"])
    fair.push("c", ["c0", "c1"])
    assert fair.dispatch() == 0  # two wait in Celery already

    order = [_take(fair) for _ in range(9)]
    # B and C joined at the current virtual time, so they go before A's next; then one each in turn.
    assert order == ["a0", "a1", "b0", "c0", "a2", "c1", "a3", "a4", "a5"]
    assert fair.waiting() == 0 and _in_broker(fair) == []


def test_a_tenant_back_after_a_pause_gets_no_credit_for_it(app: Celery) -> None:
    fair = _fair(app, ahead=1)
    fair.push("a", [f"a{i}" for i in range(8)])
    fair.push("b", ["b0"])
    fair.dispatch()
    order = [_take(fair) for _ in range(4)]
    fair.push("b", ["b1", "b2", "b3"])  # B was idle while A ran: it rejoins at the current time, not earlier
    order += [_take(fair) for _ in range(8)]
    # Idle, B gathered no credit: it rejoins at the current virtual time, so it alternates with A rather than
    # taking three turns in a row.
    assert order == ["a0", "b0", "a1", "a2", "a3", "b1", "a4", "b2", "a5", "b3", "a6", "a7"]


def test_without_a_bound_every_job_goes_to_celery_at_once_first_come_first_served(app: Celery) -> None:
    fair = _fair(app, ahead=0)
    fair.push("a", [f"a{i}" for i in range(5)])
    assert fair.dispatch() == 5
    fair.push("b", ["b0"])
    assert fair.dispatch() == 1
    assert _in_broker(fair) == ["a0", "a1", "a2", "a3", "a4", "b0"]


def test_queue_depth_counts_the_backlogs_too(app: Celery) -> None:
    fair = _fair(app, ahead=2)
    fair.push("a", [f"a{i}" for i in range(5)])
    fair.push("b", ["b0"])
    fair.dispatch()
    # In Celery: a0, then b0 (B joined at the virtual time of a0); the rest wait in A's backlog.
    assert _in_broker(fair) == ["a0", "b0"] and fair.backlog("a") == ["a1", "a2", "a3", "a4"]
    assert queue_depth(app, "ingest") == 6 and fair.waiting() == 4


def test_jobs_taken_by_a_failed_send_are_sent_by_a_later_dispatch(app: Celery, valkey: str, key_prefix: str) -> None:
    live = redis.Redis.from_url(valkey)
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    dead_app = create_celery_app(Settings(redis=RedisSettings(url=dead_broker, key_prefix=key_prefix)), dead_broker)
    dead_app.conf.task_publish_retry = False
    failing = FairQueue(dead_app, "ingest", INGEST_TASK, 2, client=live, sending_grace_s=12.0)
    fair = _fair(app, ahead=2, sending_grace_s=12.0)
    try:
        failing.push("a", ["a0", "a1", "a2"])
        taken = time.monotonic()
        assert failing.dispatch_quietly() == 0  # the broker refused: a0 and a1 were taken, not sent
        assert time.monotonic() - taken < 10  # the publish's own retries
        assert fair.dispatch() == 0  # within the grace they hold their places: their sender may only be slow
        time.sleep(max(0.0, taken + 12.2 - time.monotonic()))
        assert fair.dispatch() == 2
        assert _in_broker(fair) == ["a0", "a1"] and fair.backlog("a") == ["a2"]
    finally:
        dead_app.close()


def test_a_purged_queue_holds_no_place(app: Celery) -> None:
    fair = _fair(app, ahead=2)
    fair.push("a", [f"a{i}" for i in range(4)])
    fair.dispatch()
    assert app.control.purge() == 2  # an operator empties the queue
    assert fair.dispatch() == 2 and _in_broker(fair) == ["a2", "a3"]


def test_a_queue_may_make_each_job_id_its_task_id(app: Celery) -> None:
    fair = _fair(app, ahead=1, job_id_is_task_id=True)
    fair.push("a", ["call-1"])
    fair.dispatch()
    [message] = fair.redis.lrange(broker_key(app, "ingest"), 0, -1)
    assert json.loads(message)["headers"]["id"] == "call-1"
