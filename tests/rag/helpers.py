"""Small helpers shared by the RAG tests."""

from __future__ import annotations

import time
from collections.abc import Sequence

from rag.ingest import Submission
from rag.jobs import FINAL_STATES, JobState, JobStatus
from rag.services import RagServices


def wait_jobs(rag: RagServices, tenant: str, jobs: Sequence[JobStatus], timeout: float = 180.0) -> list[JobStatus]:
    deadline = time.monotonic() + timeout
    current = list(jobs)
    while time.monotonic() < deadline:
        current = [rag.ingest.status(tenant, j.job_id) for j in current]
        if all(j.state in FINAL_STATES for j in current):
            return current
        time.sleep(0.2)
    raise AssertionError(f"jobs not finished within {timeout}s: {[(j.job_id, j.state.value) for j in current]}")


def ingest_text(rag: RagServices, tenant: str, text: str, **fields: object) -> JobStatus:
    """Submit one Markdown document and wait until its job is done."""
    fields.setdefault("filename", "doc.md")
    [job] = rag.ingest.submit(tenant, [Submission(content=text.encode(), **fields)])  # type: ignore[arg-type]
    [job] = wait_jobs(rag, tenant, [job])
    assert job.state == JobState.DONE, job.error
    return job


GUIDE = """# Payments guide

## Idempotency

Every payment request carries an idempotency key. When the network drops the response and the
client retries, the server finds the key and returns the first result: the card is charged once.

## Refunds

Refunds are issued within five business days. A refund never exceeds the original charge.

### Partial refunds

A partial refund returns part of the amount; several partial refunds may follow one charge.
"""
