"""Retrieval: vector, keyword (BM25) or hybrid search in one tenant, with filters and a score floor."""

from __future__ import annotations

from typing import Literal

from opentelemetry import trace
from pydantic import BaseModel, Field

from observability.observations import observe
from rag.embedding import Embedder
from rag.filters import FilterSpec, to_weaviate
from rag.store import ChunkStore, SearchHit

# A proxy until the process sets up tracing; spans are cheap no-ops without it.
_tracer = trace.get_tracer("orchestrion.rag")
# Hybrid's weight of the vector side. On the Python library pages' tuning questions (bench/results/
# retrieval_quality.md) 0.6 and 0.7 ranked best (detail R@1 0.84 against 0.82 at 0.5, R@5 0.96 against 0.91).
DEFAULT_ALPHA = 0.6


class SearchRequest(BaseModel):
    query: str = Field(min_length=1, max_length=2000, description="What to look for, in natural language.")
    mode: Literal["hybrid", "vector", "keyword"] = Field(
        default="hybrid", description="hybrid (vector + BM25), vector (meaning) or keyword (BM25 terms)."
    )
    k: int = Field(default=5, ge=1, le=50, description="How many chunks to return.")
    alpha: float = Field(
        default=DEFAULT_ALPHA, ge=0.0, le=1.0, description="Hybrid only: 1 = all vector, 0 = all keyword."
    )
    fusion: Literal["relative_score", "ranked"] = Field(
        default="relative_score", description="Hybrid only: how vector and keyword scores are combined."
    )
    filters: FilterSpec | None = Field(default=None, description="Metadata filter (see rag/filters.py).")
    min_score: float | None = Field(
        default=None, description="Drop hits scoring below this (vector: cosine similarity; others: their score)."
    )


def search(store: ChunkStore, embedder: Embedder, tenant: str, request: SearchRequest) -> list[SearchHit]:
    filters = request.filters.model_dump(mode="json", exclude_none=True) if request.filters is not None else None
    metadata = {"k": request.k, "mode": request.mode, "filters": filters, "min_score": request.min_score}
    with observe("retrieval", as_type="retriever", input={"query": request.query}, metadata=metadata) as observed:
        hits = _search(store, embedder, tenant, request)
        observed.attributes(**{"rag.k": request.k, "rag.mode": request.mode, "rag.hits": len(hits)})
        observed.output([{"doc_id": h.doc_id, "chunk_index": h.chunk_index, "score": h.score} for h in hits])
        return hits


def _search(store: ChunkStore, embedder: Embedder, tenant: str, request: SearchRequest) -> list[SearchHit]:
    vector = None
    if request.mode != "keyword":
        # Its own span: under load the query waits here for the batch ahead of it (rag/batching.py).
        with _tracer.start_as_current_span("embed query"):
            vector = embedder.embed([request.query])[0]
    with _tracer.start_as_current_span("weaviate query", attributes={"rag.mode": request.mode, "rag.k": request.k}):
        hits = store.search(
            tenant,
            mode=request.mode,
            query=request.query,
            vector=vector,
            k=request.k,
            filters=to_weaviate(request.filters, store.has_meta_property) if request.filters is not None else None,
            alpha=request.alpha,
            fusion=request.fusion,
        )
    if request.min_score is not None:
        hits = [h for h in hits if h.score >= request.min_score]
    return hits
