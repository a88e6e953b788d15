"""Ingest tools: submit documents (jobs on the ingest queue), follow a job, delete a document."""

from __future__ import annotations

import base64
import binascii
import time

import anyio
from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel, Field

from core.errors import InvalidInputError
from mcp_servers.context import DESTRUCTIVE, READ_ONLY, ServerDeps, caller_tenant, client_errors
from operations import knowledge
from rag.filters import Scalar
from rag.ingest import Submission
from rag.jobs import FINAL_STATES, JobStatus


class DocumentIn(BaseModel):
    content: str | None = Field(default=None, description="The document as text (text, Markdown or HTML).")
    content_base64: str | None = Field(default=None, description="The document's bytes, base64 (for PDF).")
    filename: str | None = Field(default=None, max_length=255, description="Name with extension; sets the type.")
    media_type: str | None = Field(default=None, max_length=100, description="e.g. text/markdown, application/pdf.")
    doc_id: str | None = Field(default=None, max_length=200, description="Stable id; same id = replace document.")
    title: str | None = Field(default=None, max_length=500)
    source: str | None = Field(default=None, max_length=1000, description="Where it came from (URL, path).")
    tags: list[str] = Field(default_factory=list, max_length=32)
    metadata: dict[str, Scalar] = Field(default_factory=dict, description="Filterable key: scalar pairs.")

    def submission(self, position: int) -> Submission:
        if (self.content is None) == (self.content_base64 is None):
            raise InvalidInputError(f"document {position}: give exactly one of content and content_base64")
        if self.content is not None:
            data = self.content.encode()
        else:
            try:
                data = base64.b64decode(self.content_base64 or "", validate=True)
            except binascii.Error as exc:
                raise InvalidInputError(f"document {position}: content_base64 is not valid base64") from exc
        return Submission(data, self.filename, self.media_type, self.doc_id, self.title, self.source,
                          tuple(self.tags), dict(self.metadata))  # fmt: skip


class Job(BaseModel):
    job_id: str
    doc_id: str
    state: str
    progress: float
    chunks_total: int
    chunks_done: int
    error: str
    result: dict[str, int]
    created_at: float
    updated_at: float


class Jobs(BaseModel):
    jobs: list[Job]


class Deleted(BaseModel):
    doc_id: str
    deleted_chunks: int


def _job(status: JobStatus) -> Job:
    return Job(**status.public())


def add_ingest_tools(server: MCPServer, deps: ServerDeps, default_wait_s: float) -> None:
    @server.tool(
        description=(
            "Ingest documents into the caller's knowledge base. Each becomes a job on the ingest queue; "
            "progress is reported while waiting (up to wait_s), then the jobs are returned. The same "
            "document submitted twice returns the same job."
        )
    )
    async def ingest_documents(
        documents: list[DocumentIn] = Field(min_length=1, max_length=100),
        idempotency_key: str | None = Field(default=None, max_length=200, description="Makes retries safe."),
        wait_s: float | None = Field(default=None, ge=0, le=600, description="How long to wait for completion."),
        ctx: Context | None = None,
    ) -> Jobs:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            submissions = [d.submission(i) for i, d in enumerate(documents)]
            jobs = await knowledge.submit_documents(services, tenant, submissions, idempotency_key)
            deadline = time.monotonic() + (default_wait_s if wait_s is None else wait_s)
            while time.monotonic() < deadline and any(j.state not in FINAL_STATES for j in jobs):
                await anyio.sleep(0.5)
                jobs = await knowledge.job_statuses(services, tenant, [j.job_id for j in jobs])
                if ctx is not None:
                    finished = sum(j.state in FINAL_STATES for j in jobs)
                    done = sum(j.chunks_done for j in jobs)
                    total = sum(j.chunks_total for j in jobs) or None
                    await ctx.report_progress(done, total, f"{finished}/{len(jobs)} documents finished")
            return Jobs(jobs=[_job(j) for j in jobs])

    @server.tool(description="State and progress of one of the caller's ingest jobs.", annotations=READ_ONLY)
    async def get_ingest_status(job_id: str = Field(min_length=1, max_length=64)) -> Job:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            return _job(await knowledge.job_status(services, tenant, job_id))

    @server.tool(description="Delete one of the caller's documents and all its chunks.", annotations=DESTRUCTIVE)
    async def delete_document(doc_id: str = Field(min_length=1, max_length=200)) -> Deleted:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            return Deleted(doc_id=doc_id, deleted_chunks=await knowledge.delete_document(services, tenant, doc_id))
