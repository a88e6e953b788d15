"""A job's submitted bytes live only while it may still run: every final state drops them, and workers sweep
the ones a dead process left behind."""

from __future__ import annotations

import json
from collections.abc import Callable

from rag.jobs import JobState
from tests.rag.conftest import Private, note


def test_the_sweep_drops_payloads_of_ended_and_expired_jobs_only(private: Callable[..., Private], tenant: str) -> None:
    p = private(10)
    failed, expired, waiting = p.service().submit(tenant, [note("failed"), note("expired"), note("waiting")])
    # As a process that died between recording a final state and dropping the bytes leaves them (and as every
    # failed job did before final states dropped them): the record says failed, the payload is still there.
    record = json.loads(p.redis.get(f"{p.prefix}:job:{failed.job_id}") or b"")
    p.redis.set(f"{p.prefix}:job:{failed.job_id}", json.dumps({**record, "state": JobState.FAILED.value}))
    p.redis.delete(f"{p.prefix}:job:{expired.job_id}")  # its record expired before its payload
    assert p.keys("jobdata") == 3

    assert p.jobs.sweep(interval_s=60) == 2
    assert p.jobs.payload(waiting.job_id).content == note("waiting").content  # a job that may still run keeps it
    assert p.keys("jobdata") == 1

    p.redis.set(f"{p.prefix}:job:{waiting.job_id}", json.dumps({**record, "state": JobState.DONE.value}))
    assert p.jobs.sweep(interval_s=60) == 0  # once per interval across processes: the next one is not due
    p.redis.delete(f"{p.prefix}:ingest:sweep")
    assert p.jobs.sweep(interval_s=60) == 1 and p.keys("jobdata") == 0
