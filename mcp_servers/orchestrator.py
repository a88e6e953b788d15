"""The orchestrator for MCP clients: `ask` (a cited answer from the agents), runs, approvals, threads; and the
caller's documents as MCP resources (a listing and `orchestrion://documents/{doc_id}`)."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ResourceError
from mcp.server.mcpserver.resources.templates import ResourceSecurity
from mcp_types import ListResourcesResult, PaginatedRequestParams, Resource
from pydantic import BaseModel, Field

from core.errors import OrchestrionError
from graphs.runs import RunRecord, ThreadRecord
from mcp_servers.context import READ_ONLY, ServerDeps, caller_tenant, client_errors
from mcp_servers.protocol import client_log
from operations import knowledge

log = logging.getLogger(__name__)
DOCUMENT_URI = "orchestrion://documents/{+doc_id}"
LISTING_URI = "orchestrion://documents"
RESOURCES_PER_PAGE = 100


class Citation(BaseModel):
    n: int = Field(description="The number the answer cites it by, as [n].")
    kind: str = Field(description="document or tool")
    doc_id: str | None
    title: str | None
    heading_path: list[str]
    chunk_index: int | None
    score: float | None
    source: str | None
    label: str


class RunResult(BaseModel):
    run_id: str
    thread_id: str
    status: str = Field(description="success, error, interrupted (waiting for approve), running or pending")
    answer: str | None
    citations: list[Citation]
    stop_reason: str = Field(description="Why the run stopped early (a budget), if it did.")
    error: str
    interrupts: list[dict[str, Any]] = Field(description="Approvals the run waits for: tool, arguments, step.")
    plan_source: str = Field(description="model, fixed (the model cannot plan) or fallback (no valid plan)")
    trace_id: str | None
    usage: dict[str, float]


class Thread(BaseModel):
    thread_id: str
    status: str
    created_at: float
    updated_at: float
    last_run_id: str | None


class Threads(BaseModel):
    threads: list[Thread]
    next_cursor: str | None


def run_result(run: RunRecord) -> RunResult:
    return RunResult(
        run_id=run.run_id,
        thread_id=run.thread_id,
        status=run.status,
        answer=run.answer,
        citations=[Citation(**c) for c in run.citations],
        stop_reason=run.stop_reason,
        error=run.error,
        interrupts=run.interrupts,
        plan_source=run.plan_source,
        trace_id=run.trace_id,
        usage=run.usage,
    )


def _thread(record: ThreadRecord) -> Thread:
    return Thread(
        thread_id=record.thread_id,
        status=record.status,
        created_at=record.created_at,
        updated_at=record.updated_at,
        last_run_id=record.last_run_id,
    )


class _Progress:
    """Run events as MCP progress notifications: plan made, step n of m, retrieving, calling a tool, answering."""

    def __init__(self, ctx: Context | None) -> None:
        self.ctx = ctx
        self.done = 0
        self.total: float | None = None

    async def __call__(self, mode: str, data: Any) -> None:
        if self.ctx is None or mode != "custom" or not isinstance(data, dict):
            return
        kind = data.get("event")
        if kind == "plan":
            steps = data.get("steps") or []
            self.total = self.done + len(steps) + 1
            kinds = ", ".join(s["kind"] for s in steps)
            message = f"plan {data.get('version')} ({data.get('source')}): {len(steps)} steps: {kinds}"
        elif kind == "step":
            message = f"step {self.done} of {int(self.total or 0) - 1}: {data.get('detail')}"
        elif kind == "answer":
            message = f"writing the answer from {data.get('sources')} sources"
        else:
            return
        self.done += 1
        await self.ctx.report_progress(self.done, self.total, message)
        await client_log(self.ctx, "info", message)


def add_orchestrator_tools(server: MCPServer, deps: ServerDeps) -> None:
    @server.tool(
        description=(
            "Answer a question from the caller's documents: a planner plans, a retriever searches, an executor "
            "runs tools and writes the answer with numbered citations [n]. Progress is reported while it runs. "
            "Pass thread_id to continue a conversation. A run that needs approval for a tool returns status "
            "'interrupted': decide with approve."
        )
    )
    async def ask(
        question: str = Field(min_length=1, max_length=8000),
        thread_id: str | None = Field(default=None, max_length=64, description="Continue this thread."),
        ctx: Context | None = None,
    ) -> RunResult:
        with client_errors():
            runner, tenant = deps.runs(), caller_tenant(deps)
            return run_result(await runner.ask(tenant, question, thread_id, on_event=_Progress(ctx)))

    @server.tool(
        description="One of the caller's runs: status, answer, citations, pending approvals.", annotations=READ_ONLY
    )
    async def get_run(run_id: str = Field(min_length=1, max_length=64)) -> RunResult:
        with client_errors():
            runner, tenant = deps.runs(), caller_tenant(deps)
            return run_result(await runner.get_run(tenant, run_id))

    @server.tool(description="Approve or reject the tool call a run waits for; the run then goes on.")
    async def approve(
        run_id: str = Field(min_length=1, max_length=64),
        decision: Literal["approve", "reject"] = Field(description="approve runs the call; reject replans."),
        reason: str = Field(default="", max_length=1000),
        ctx: Context | None = None,
    ) -> RunResult:
        with client_errors():
            runner, tenant = deps.runs(), caller_tenant(deps)
            done = await runner.approve(tenant, run_id, decision == "approve", reason, on_event=_Progress(ctx))
            return run_result(done)

    @server.tool(description="The caller's threads, most recently used first.", annotations=READ_ONLY)
    async def list_threads(
        limit: int = Field(default=20, ge=1, le=100), cursor: str | None = Field(default=None, max_length=20)
    ) -> Threads:
        with client_errors():
            runner, tenant = deps.runs(), caller_tenant(deps)
            offset = int(cursor) if cursor and cursor.isdigit() else 0
            threads = await runner.list_threads(tenant, limit + 1, offset)
            more = len(threads) > limit
            return Threads(
                threads=[_thread(t) for t in threads[:limit]], next_cursor=str(offset + limit) if more else None
            )


def add_document_resources(server: MCPServer, deps: ServerDeps) -> None:
    @server.resource(
        LISTING_URI,
        name="documents",
        mime_type="application/json",
        description="The caller's documents: doc id, title, source, chunk count.",
    )
    async def listing() -> str:
        try:
            services, tenant = deps.ready(), caller_tenant(deps)
            page = await knowledge.list_documents(services, tenant, RESOURCES_PER_PAGE, 0)
        except OrchestrionError as exc:
            raise ResourceError(str(exc)) from exc
        docs = [
            {
                "doc_id": d.doc_id,
                "title": d.title,
                "source": d.source,
                "chunks": d.chunk_count,
                "uri": f"orchestrion://documents/{d.doc_id}",
            }
            for d in page.documents
        ]
        return json.dumps({"documents": docs, "more": page.more})

    @server.resource(
        DOCUMENT_URI,
        name="document",
        mime_type="text/markdown",
        description="One of the caller's documents, its chunks in order.",
        security=ResourceSecurity(exempt_params={"doc_id"}),
    )
    async def document(doc_id: str) -> str:
        try:
            services, tenant = deps.ready(), caller_tenant(deps)
            info, chunks = await knowledge.get_document(services, tenant, doc_id)
        except OrchestrionError as exc:
            raise ResourceError(str(exc)) from exc
        return f"# {info.title}\n\n" + "\n\n".join(c.text for c in chunks)

    # resources/list also names each of the caller's documents, so clients that attach resources show them.
    async def list_resources(_ctx: Any, params: PaginatedRequestParams | None) -> ListResourcesResult:
        listed = await server.list_resources()
        offset = int(params.cursor) if params and params.cursor and params.cursor.isdigit() else 0
        try:
            services, tenant = deps.ready(), caller_tenant(deps)
            page = await knowledge.list_documents(services, tenant, RESOURCES_PER_PAGE, offset)
        except OrchestrionError:
            return ListResourcesResult(resources=listed)
        except Exception:
            log.exception("listing the documents as resources failed")
            return ListResourcesResult(resources=listed)
        docs = [
            Resource(
                uri=f"orchestrion://documents/{d.doc_id}",
                name=d.doc_id,
                title=d.title,
                mime_type="text/markdown",
                description=d.source or None,
            )
            for d in page.documents
        ]
        cursor = str(offset + RESOURCES_PER_PAGE) if page.more else None
        return ListResourcesResult(resources=(listed if offset == 0 else []) + docs, next_cursor=cursor)

    server._lowlevel_server.add_request_handler("resources/list", PaginatedRequestParams, list_resources)
