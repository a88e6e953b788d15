"""Move a tenant to the configured embedding model: re-embed its stored chunks into that model's
collection, then drop the old copy. The stored passages are re-embedded as they are (no re-parse),
so citations keep their text, headings and positions."""

from __future__ import annotations

from collections.abc import Callable

from core.errors import NotFoundError, OrchestrionError
from rag.chunking import Chunker
from rag.embedding import Embedder, EmbeddingSpec
from rag.store import ChunkStore, DocumentInfo, StoredChunk, recorded_specs

PAGE = 200


def source_store(target: ChunkStore, tenant: str) -> ChunkStore | None:
    """The store of another embedding model that holds `tenant`, if any."""
    for name, spec in recorded_specs(target.client).items():
        if name == target.chunks_name:
            continue
        other = ChunkStore(target.client, EmbeddingSpec(**spec))
        if other.has_tenant(tenant):
            return other
    return None


def reindex_tenant(
    target: ChunkStore,
    embedder: Embedder,
    chunker: Chunker,
    tenant: str,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Re-embed every document of `tenant` into `target`; returns the number of chunks moved."""
    source = source_store(target, tenant)
    if source is None:
        if target.has_tenant(tenant):
            return 0  # already on this model
        raise NotFoundError(f"tenant {tenant!r} has no documents under any embedding model")
    docs: list[DocumentInfo] = []
    while batch := source.list_documents(tenant, PAGE, len(docs)):
        docs.extend(batch)
    total = sum(d.chunk_count for d in docs)
    target.create_tenant(tenant)
    moved = 0
    for info in docs:
        chunks = source.document_chunks(tenant, info.doc_id)
        if len(chunks) != info.chunk_count:  # the source is deleted at the end: never from a partial copy
            raise OrchestrionError(
                f"document {info.doc_id!r} of tenant {tenant!r} has {len(chunks)} chunks stored where its record "
                f"says {info.chunk_count}; nothing was deleted: re-ingest it, then run reindex again"
            )
        texts = [chunker.embed_text_for(info.title, tuple(c.heading_path), c.text) for c in chunks]
        vectors = embedder.embed(texts)
        stored = [
            StoredChunk(c.chunk_index, c.text, tuple(c.heading_path), _sha(t))
            for c, t in zip(chunks, texts, strict=True)
        ]
        target.write_document(tenant, info, stored, vectors)
        moved += len(chunks)
        progress(moved, total)
    source.delete_tenant(tenant)  # only after every document is in the new collection
    return moved


def _sha(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
