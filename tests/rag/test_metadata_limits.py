"""Every tenant's metadata keys are properties of one shared collection: their number is bounded, per document
and in total, so no tenant can grow the schema for everyone."""

from __future__ import annotations

import uuid

import pytest

from core.errors import InvalidInputError
from rag.ingest import IngestService, Submission
from rag.services import RagServices
from rag.store import ChunkStore, DocumentInfo, StoredChunk, now_iso


def _capped(rag: RagServices, room: int) -> tuple[ChunkStore, IngestService]:
    """The session's collection with room for `room` more metadata properties than it holds now."""
    held = sum(
        p.name.startswith("meta_") for p in rag.weaviate.collections.use(rag.store.chunks_name).config.get().properties
    )
    store = ChunkStore(rag.weaviate, rag.store.spec, max_meta_properties=held + room)
    service = IngestService(rag.settings.rag, rag.jobs, store, rag.embedder, rag.ingest.chunker,
                            lambda _tenant, _ids: pytest.fail("a refused document was queued"))  # fmt: skip
    return store, service


def _keys(count: int) -> dict[str, str | int | float | bool]:
    tag = uuid.uuid4().hex[:8]
    return {f"k{tag}_{i}": i for i in range(count)}


def test_a_document_with_too_many_metadata_keys_is_refused(rag: RagServices, tenant: str) -> None:
    cap = rag.settings.rag.max_metadata_keys
    doc = Submission(b"# Many keys\n\nBody.", "many.md", metadata=_keys(cap + 1))
    with pytest.raises(InvalidInputError, match=rf"many.md: {cap + 1} metadata keys, over the limit of {cap} per doc"):
        rag.ingest.submit(tenant, [doc])
    assert not rag.redis.keys(f"{rag.settings.redis.key_prefix}:idem:{tenant}:*")


def test_new_metadata_keys_past_the_collections_limit_are_refused_at_submit_and_write(
    rag: RagServices, tenant: str
) -> None:
    store, service = _capped(rag, room=2)
    keys = _keys(3)
    doc = Submission(b"# New keys\n\nBody.", "new.md", metadata=keys)
    with pytest.raises(InvalidInputError, match=r"would add 3 filterable properties .* over the limit of \d+ \(ORCH"):
        service.submit(tenant, [doc])
    # Across the documents of one submission too: two documents of two new keys each are four.
    two, other = dict(list(keys.items())[:2]), _keys(2)
    with pytest.raises(InvalidInputError, match=r"would add 4 filterable properties"):
        service.submit(tenant, [Submission(b"# A\n\nA.", "a.md", metadata=two),
                                Submission(b"# B\n\nB.", "b.md", metadata=other)])  # fmt: skip

    # A worker writing what passed the check elsewhere (another process's cache, a race) refuses too.
    info = DocumentInfo("new.md", "New", "new.md", "markdown", [], keys, "digest", 1, now_iso())
    vector = [1.0] + [0.0] * (store.spec.dimension - 1)
    with pytest.raises(InvalidInputError, match="ORCHESTRION_RAG__MAX_METADATA_PROPERTIES"):
        store.write_document(tenant, info, [StoredChunk(0, "Body.", ("New",), "h0")], [vector])
    assert not any(store.has_meta_property(f"meta_{key}__number", reread=True) for key in keys)
