"""Retrieval tools: search, read one document, list documents. The tenant is the caller's."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from core.errors import InvalidInputError
from mcp_servers.context import READ_ONLY, ServerDeps, caller_tenant, client_errors
from operations import knowledge
from rag.filters import FilterSpec
from rag.search import SearchRequest
from rag.store import DocumentInfo, SearchHit


class SearchResults(BaseModel):
    hits: list[SearchHit] = Field(description="Best first; each carries what a citation needs.")


class Document(BaseModel):
    doc_id: str
    title: str
    source: str
    doc_type: str
    tags: list[str]
    metadata: dict[str, Any]
    chunk_count: int
    ingested_at: str


class DocumentChunks(BaseModel):
    document: Document
    chunks: list[SearchHit] = Field(description="Every chunk of the document, in order.")


class DocumentPage(BaseModel):
    documents: list[Document]
    next_cursor: str | None = Field(description="Pass to get the next page; null on the last page.")


def add_retrieval_tools(server: MCPServer, deps: ServerDeps) -> None:
    @server.tool(
        description="Search the caller's documents; returns cited chunks (vector, keyword or hybrid).",
        annotations=READ_ONLY,
    )
    async def search_documents(
        query: str = Field(min_length=1, max_length=2000, description="What to look for."),
        mode: Literal["hybrid", "vector", "keyword"] = "hybrid",
        k: int = Field(default=5, ge=1, le=50, description="How many chunks."),
        alpha: float = Field(
            default=SearchRequest.model_fields["alpha"].default,
            ge=0,
            le=1,
            description="Hybrid: 1 = all vector, 0 = all keyword.",
        ),
        fusion: Literal["relative_score", "ranked"] = "relative_score",
        filters: FilterSpec | None = Field(default=None, description="Metadata filter: condition, all or any."),
        min_score: float | None = Field(default=None, description="Drop hits scoring below this."),
    ) -> SearchResults:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            request = SearchRequest(
                query=query, mode=mode, k=k, alpha=alpha, fusion=fusion, filters=filters, min_score=min_score
            )
            return SearchResults(hits=await knowledge.search_documents(services, tenant, request))

    @server.tool(
        description="All chunks of one of the caller's documents, in order, with its metadata.", annotations=READ_ONLY
    )
    async def get_document(doc_id: str = Field(min_length=1, max_length=200)) -> DocumentChunks:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            info, chunks = await knowledge.get_document(services, tenant, doc_id)
            return DocumentChunks(document=document_out(info), chunks=chunks)

    @server.tool(description="The caller's documents, a page at a time, ordered by doc_id.", annotations=READ_ONLY)
    async def list_documents(
        limit: int = Field(default=20, ge=1, le=200), cursor: str | None = Field(default=None)
    ) -> DocumentPage:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            offset = _offset(cursor)
            page = await knowledge.list_documents(services, tenant, limit, offset)
            return DocumentPage(
                documents=[document_out(d) for d in page.documents],
                next_cursor=str(offset + limit) if page.more else None,
            )


def document_out(info: DocumentInfo) -> Document:
    data: dict[str, Any] = asdict(info)
    data.pop("content_hash", None)
    return Document(**data)


def _offset(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit():
        raise InvalidInputError(f"invalid cursor {cursor!r}: pass back the next_cursor of the previous page")
    return int(cursor)
