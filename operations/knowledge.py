"""Documents, ingest jobs and search for one tenant. The RAG layer is synchronous (Redis, Weaviate and the
embedder's batching thread), so each operation runs in a worker thread, never on the event loop."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

from operations.services import Services
from rag.ingest import Submission
from rag.jobs import JobStatus
from rag.search import SearchRequest, search
from rag.store import DocumentInfo, SearchHit


@dataclass(frozen=True)
class DocumentPage:
    documents: list[DocumentInfo]
    more: bool


async def search_documents(services: Services, tenant: str, request: SearchRequest) -> list[SearchHit]:
    rag = services.rag
    return await anyio.to_thread.run_sync(lambda: search(rag.store, rag.embedder, tenant, request))


async def get_document(services: Services, tenant: str, doc_id: str) -> tuple[DocumentInfo, list[SearchHit]]:
    store = services.rag.store

    def read() -> tuple[DocumentInfo, list[SearchHit]]:
        return store.document(tenant, doc_id), store.document_chunks(tenant, doc_id)

    return await anyio.to_thread.run_sync(read)


async def list_documents(services: Services, tenant: str, limit: int, offset: int) -> DocumentPage:
    docs = await anyio.to_thread.run_sync(services.rag.store.list_documents, tenant, limit + 1, offset)
    return DocumentPage(docs[:limit], len(docs) > limit)


async def delete_document(services: Services, tenant: str, doc_id: str) -> int:
    return await anyio.to_thread.run_sync(services.rag.ingest.delete_document, tenant, doc_id)


async def submit_documents(
    services: Services, tenant: str, submissions: Sequence[Submission], idempotency_key: str | None = None
) -> list[JobStatus]:
    ingest = services.rag.ingest
    return await anyio.to_thread.run_sync(lambda: ingest.submit(tenant, list(submissions), idempotency_key))


async def job_status(services: Services, tenant: str, job_id: str) -> JobStatus:
    return await anyio.to_thread.run_sync(services.rag.ingest.status, tenant, job_id)


async def job_statuses(services: Services, tenant: str, job_ids: Sequence[str]) -> list[JobStatus]:
    ingest = services.rag.ingest
    return await anyio.to_thread.run_sync(lambda: [ingest.status(tenant, j) for j in job_ids])
