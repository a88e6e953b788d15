"""Agent API for documents: upload (queued ingest), jobs, listing, reading, deleting, search."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, UploadFile
from fastapi.responses import JSONResponse

from api.auth import Svc, Tenant
from core.errors import InvalidInputError
from operations import knowledge
from rag.ingest import Submission, check_request_size
from rag.search import SearchRequest

router = APIRouter(prefix="/v1", tags=["documents"])
MAX_OFFSET = 100_000  # Weaviate pages by offset; beyond this, filter instead


@router.post("/documents", status_code=202, summary="Upload documents; each becomes an ingest job")
async def upload_documents(
    svc: Svc,
    caller: Tenant,
    files: Annotated[list[UploadFile], File(description="One or more documents (text, Markdown, HTML, PDF)")],
    tags: Annotated[str, Form(description="Comma-separated tags for every file")] = "",
    metadata: Annotated[str, Form(description='JSON object of filterable scalars, e.g. {"year": 2025}')] = "{}",
    doc_id: Annotated[str | None, Form(description="Only with one file: its stable id")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)] = None,
) -> JSONResponse:
    try:
        meta = json.loads(metadata)
    except ValueError as exc:
        raise InvalidInputError(f"metadata is not valid JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise InvalidInputError("metadata must be a JSON object")
    if doc_id is not None and len(files) != 1:
        raise InvalidInputError("doc_id applies to a single file; upload one file or leave doc_id out")
    caps = svc.settings.rag
    check_request_size(caps, len(files), 0)
    submissions, total = [], 0
    for upload in files:
        # One byte past a limit is enough to refuse: the request never holds more than its caps in memory.
        content = await upload.read(min(caps.max_document_bytes, caps.max_request_bytes - total) + 1)
        total += len(content)
        check_request_size(caps, len(files), total)
        submissions.append(
            Submission(
                content=content,
                filename=upload.filename,
                media_type=upload.content_type if upload.content_type != "application/octet-stream" else None,
                doc_id=doc_id,
                tags=tuple(t.strip() for t in tags.split(",") if t.strip()),
                metadata=meta,
            )
        )
    jobs = await knowledge.submit_documents(svc, caller, submissions, idempotency_key)
    return JSONResponse({"jobs": [j.public() for j in jobs]}, status_code=202)


@router.get("/jobs/{job_id}", summary="State and progress of an ingest job")
async def get_job(job_id: str, svc: Svc, caller: Tenant) -> dict[str, Any]:
    return (await knowledge.job_status(svc, caller, job_id)).public()


@router.get("/documents", summary="List documents, a page at a time")
async def list_documents(
    svc: Svc,
    caller: Tenant,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> dict[str, Any]:
    page = await knowledge.list_documents(svc, caller, limit, offset)
    return {"documents": [asdict(d) for d in page.documents]}


@router.get("/documents/{doc_id:path}", summary="One document and all its chunks in order")
async def get_document(doc_id: str, svc: Svc, caller: Tenant) -> dict[str, Any]:
    info, chunks = await knowledge.get_document(svc, caller, doc_id)
    return {"document": asdict(info), "chunks": [asdict(c) for c in chunks]}


@router.delete("/documents/{doc_id:path}", summary="Delete a document and its chunks")
async def delete_document(doc_id: str, svc: Svc, caller: Tenant) -> dict[str, Any]:
    return {"doc_id": doc_id, "deleted_chunks": await knowledge.delete_document(svc, caller, doc_id)}


@router.post("/search", summary="Search the caller's documents (vector, keyword or hybrid)")
async def search_documents(body: SearchRequest, svc: Svc, caller: Tenant) -> dict[str, Any]:
    hits = await knowledge.search_documents(svc, caller, body)
    return {"hits": [asdict(h) for h in hits]}
