"""Fair ingest across tenants on real workers: a note submitted behind another tenant's bulk ingest starts
after a few of the bulk's jobs, not after all of them; and jobs left in their backlogs are dispatched by the
workers' sweep when nobody else dispatches."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rag.ingest import Submission
from rag.jobs import JobState
from rag.services import RagServices
from tests.conftest import start_worker
from tests.rag.conftest import Private, note
from tests.rag.helpers import GUIDE, wait_jobs


def test_a_note_behind_another_tenants_bulk_ingest_waits_for_a_few_jobs_not_all(
    rag: RagServices, tenant: str, other_tenant: str
) -> None:
    bulk = rag.ingest.submit(
        tenant, [Submission(f"{GUIDE}\n\nCopy {i} of the guide.".encode(), f"guide-{i}.md") for i in range(16)]
    )
    [lone] = rag.ingest.submit(other_tenant, [note("lone")])

    [lone] = wait_jobs(rag, other_tenant, [lone])
    bulk = wait_jobs(rag, tenant, bulk, timeout=300)
    assert lone.state == JobState.DONE and all(j.state == JobState.DONE for j in bulk)
    before = sum(j.started_at < lone.started_at for j in bulk)
    # First come, first served it would start after all 16. Fair: after those running (the session's worker
    # runs 2) and those waiting in Celery (ORCHESTRION_RAG__INGEST_DISPATCH_AHEAD, 2), one more for a race.
    ahead = rag.settings.rag.ingest_dispatch_ahead
    assert before <= ahead + 2 + 1, sorted((j.started_at, j.doc_id) for j in [*bulk, lone])


def test_jobs_left_in_their_backlogs_are_dispatched_by_the_workers_sweep(
    private: Callable[..., Private], tenant: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    p = private(10)
    # A producer that queued its jobs in the backlog and died before dispatching any of them.
    jobs = p.service(p.queue.ingest.push).submit(tenant, [note(f"left-{i}") for i in range(3)])
    assert p.queue.ingest.waiting() == 3 and p.in_broker() == 0

    worker, _ = start_worker(p.env(stack_env), tmp_path, concurrency=1)
    try:
        done = wait_jobs(p.services(), tenant, jobs, timeout=120)
        assert [j.state for j in done] == [JobState.DONE] * 3 and p.queue.ingest.waiting() == 0
    finally:
        worker.stop()
