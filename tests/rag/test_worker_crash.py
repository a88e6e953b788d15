"""A worker that dies mid-job loses nothing: the job is redelivered and ends with no duplicate chunks."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.errors import NotFoundError
from orchestrion.knowledge import provision
from rag.ingest import Submission
from rag.jobs import JobState, JobStatus
from rag.services import RagServices
from tests.conftest import settings_from, start_worker
from tests.rag.helpers import wait_jobs
from workers.client import open_rag_with_queue


def _long_document(paragraphs: int) -> bytes:
    body = "\n\n".join(
        f"## Part {i}\n\nSection {i} explains how queue {i} hands work to worker {i % 7}, why acknowledgements "
        f"arrive late, and what happens when visibility timeout {i * 3} expires before the task ends. " * 3
        for i in range(paragraphs)
    )
    return f"# Crash test {uuid.uuid4().hex}\n\n{body}".encode()


@pytest.fixture
def crash_env(stack_env: dict[str, str]) -> dict[str, str]:
    # A prefix of its own: only the workers this test starts and kills see these jobs.
    return {**stack_env, "ORCHESTRION_REDIS__KEY_PREFIX": f"crash-{uuid.uuid4().hex[:8]}"}


@pytest.fixture
def crash_rag(crash_env: dict[str, str]) -> Iterator[RagServices]:
    rag, _queue = open_rag_with_queue(settings_from(crash_env))
    yield rag
    rag.close()


def _wait_embedding(rag: RagServices, tenant: str, job: JobStatus, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rag.ingest.status(tenant, job.job_id)
        if status.state == JobState.EMBEDDING and status.chunks_done > 0:
            return
        assert status.state not in (JobState.DONE, JobState.FAILED), "the job ended before the crash"
        time.sleep(0.05)
    raise AssertionError("the job never reached the embedding stage")


def _wait_running(rag: RagServices, tenant: str, job: JobStatus, run: int, timeout: float = 120) -> None:
    """Until the job's `run`-th run (counted by the job record) embeds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = rag.ingest.status(tenant, job.job_id)
        if status.lost_runs == run and status.state == JobState.EMBEDDING:
            return
        assert status.state not in (JobState.DONE, JobState.FAILED), (status.state, status.error)
        time.sleep(0.05)
    raise AssertionError(f"run {run} of the job never reached the embedding stage")


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _assert_complete_without_duplicates(rag: RagServices, tenant: str, job: JobStatus) -> None:
    [done] = wait_jobs(rag, tenant, [job], timeout=240)
    assert done.state == JobState.DONE, done.error
    info = rag.store.document(tenant, done.doc_id)
    chunks = rag.store.document_chunks(tenant, done.doc_id)
    assert len(chunks) == info.chunk_count == done.chunks_total
    assert sorted(c.chunk_index for c in chunks) == list(range(info.chunk_count))
    assert len(rag.store.existing_chunk_ids(tenant, done.doc_id)) == info.chunk_count


def test_killed_pool_process_job_is_redelivered_and_completes(
    crash_env: dict[str, str], crash_rag: RagServices, tmp_path: Path
) -> None:
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    provision(crash_rag, tenant)
    worker, _ = start_worker(crash_env, tmp_path, concurrency=1)
    try:
        [job] = crash_rag.ingest.submit(tenant, [Submission(_long_document(120), "long.md")])
        _wait_embedding(crash_rag, tenant, job)
        [pool_process] = _children(worker.pid)
        os.kill(pool_process, signal.SIGKILL)  # the process running the task dies mid-embedding

        _assert_complete_without_duplicates(crash_rag, tenant, job)
        assert pool_process not in _children(worker.pid)  # it really was replaced
    finally:
        worker.stop()


def test_whole_worker_crash_job_is_redelivered_to_the_next_worker(
    crash_env: dict[str, str], crash_rag: RagServices, tmp_path: Path
) -> None:
    # Short visibility timeout: Redis hands an unacknowledged task to another worker after it.
    env = {
        **crash_env,
        "ORCHESTRION_CELERY__VISIBILITY_TIMEOUT_S": "40",
        "ORCHESTRION_CELERY__TASK_TIME_LIMIT_S": "35",
        "ORCHESTRION_CELERY__TASK_SOFT_TIME_LIMIT_S": "30",
        # A long tool call must fit inside the task's soft limit, or settings refuse to load.
        "ORCHESTRION_AGENTS__LONG_TOOL_TIMEOUT_S": "25",
    }
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    provision(crash_rag, tenant)
    first, _ = start_worker(env, tmp_path, concurrency=1)
    second = None
    try:
        [job] = crash_rag.ingest.submit(tenant, [Submission(_long_document(40), "long.md")])
        _wait_embedding(crash_rag, tenant, job)
        os.killpg(first.pid, signal.SIGKILL)  # the machine or container dies: no shutdown, no ack
        killed = time.monotonic()
        first.stop()
        second, _ = start_worker(env, tmp_path, concurrency=1)

        _assert_complete_without_duplicates(crash_rag, tenant, job)
        # Back after the 40 s visibility timeout plus one sweep (workers/app.py), then a few seconds
        # of work: kombu's default sweep alone would take it past 100 s.
        assert time.monotonic() - killed < 90
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_a_document_that_kills_its_worker_every_time_fails_after_the_limit(
    crash_env: dict[str, str], crash_rag: RagServices, tmp_path: Path
) -> None:
    """A poison document (its pool process dies on every run) is redelivered RAG__INGEST_MAX_LOST_RUNS times,
    then fails with its reason, instead of coming back forever."""
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    provision(crash_rag, tenant)
    worker, _ = start_worker({**crash_env, "ORCHESTRION_RAG__INGEST_MAX_LOST_RUNS": "2"}, tmp_path, concurrency=1)
    try:
        [job] = crash_rag.ingest.submit(tenant, [Submission(_long_document(120), "poison.md")])
        for run in (1, 2):
            _wait_running(crash_rag, tenant, job, run)
            [pool_process] = _children(worker.pid)
            os.kill(pool_process, signal.SIGKILL)

        [failed] = wait_jobs(crash_rag, tenant, [job], timeout=240)
        assert failed.state == JobState.FAILED and failed.lost_runs == 2
        assert failed.error.startswith("gave up after 2 runs whose worker process died"), failed.error
        assert not crash_rag.redis.exists(f"{crash_env['ORCHESTRION_REDIS__KEY_PREFIX']}:jobdata:{job.job_id}")
        with pytest.raises(NotFoundError):
            crash_rag.store.document(tenant, job.doc_id)
    finally:
        worker.stop()
