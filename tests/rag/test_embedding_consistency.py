"""Vectors of two models never meet: a process on another model refuses the data, `reindex` moves it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence

import pytest
from weaviate.classes.config import Configure

from core.errors import EmbeddingMismatchError
from rag.embedding import CachedEmbedder, EmbeddingSpec, LocalEmbedder, MemoryCachedEmbedder, OpenAICompatibleEmbedder
from rag.reindex import reindex_tenant
from rag.search import SearchRequest, search
from rag.services import RagServices
from rag.store import ChunkStore, _doc_properties, collection_names
from tests.rag.helpers import GUIDE, ingest_text


@pytest.fixture
def gemma(embeddings_llm: str) -> OpenAICompatibleEmbedder:
    return OpenAICompatibleEmbedder(embeddings_llm, "gemma-3-270m", api_key=None, dimension=None, batch_size=16)


@pytest.fixture
def gemma_store(rag: RagServices, gemma: OpenAICompatibleEmbedder) -> Iterator[ChunkStore]:
    store = ChunkStore(rag.weaviate, gemma.spec)
    store.ensure_collections()
    yield store


def test_another_model_refuses_a_tenant_embedded_with_minilm(
    rag: RagServices, tenant: str, gemma: OpenAICompatibleEmbedder, gemma_store: ChunkStore
) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="payments")

    with pytest.raises(EmbeddingMismatchError, match=r"all-MiniLM-L6-v2 \(384-d\).*orchestrion reindex"):
        search(gemma_store, gemma, tenant, SearchRequest(query="refunds"))
    with pytest.raises(EmbeddingMismatchError):
        gemma_store.document_chunks(tenant, "payments")


def test_collection_recorded_with_other_normalisation_is_refused(rag: RagServices) -> None:
    same_name_other_norm = ChunkStore(rag.weaviate, EmbeddingSpec("all-MiniLM-L6-v2", 384, normalized=False))
    with pytest.raises(EmbeddingMismatchError, match="normalized=True"):
        same_name_other_norm.ensure_collections()
    recorded = json.loads(rag.weaviate.collections.use(rag.store.chunks_name).config.get().description or "")
    assert recorded == {"orchestrion": 2, "model": "all-MiniLM-L6-v2", "dimension": 384, "normalized": True}


def test_collections_of_an_earlier_version_get_the_properties_added_since(rag: RagServices) -> None:
    spec = EmbeddingSpec(f"earlier-{uuid.uuid4().hex[:8]}", 8, True)
    store = ChunkStore(rag.weaviate, spec)
    _, docs_name = collection_names(spec)
    recorded = json.dumps({"orchestrion": 1, "model": spec.model, "dimension": 8, "normalized": True})
    rag.weaviate.collections.create(
        docs_name,
        description=recorded,
        properties=[p for p in _doc_properties() if p.name != "submitted_at"],  # as an earlier version made it
        multi_tenancy_config=Configure.multi_tenancy(enabled=True),
        vector_config=Configure.Vectors.self_provided(),
    )
    try:
        store.ensure_collections()
        properties = {p.name for p in rag.weaviate.collections.use(docs_name).config.get().properties}
        assert "submitted_at" in properties
    finally:
        for name in collection_names(spec):
            rag.weaviate.collections.delete(name)


def test_reindex_moves_a_tenant_to_the_new_model(
    rag: RagServices, tenant: str, gemma: OpenAICompatibleEmbedder, gemma_store: ChunkStore
) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="payments")
    before = [(c.chunk_index, c.text, c.heading_path) for c in rag.store.document_chunks(tenant, "payments")]

    moved = reindex_tenant(gemma_store, gemma, rag.ingest.chunker, tenant)

    assert moved == len(before)
    after = [(c.chunk_index, c.text, c.heading_path) for c in gemma_store.document_chunks(tenant, "payments")]
    assert after == before  # same passages, same citations
    hits = search(gemma_store, gemma, tenant, SearchRequest(query="idempotency key retries", mode="hybrid"))
    assert hits and hits[0].doc_id == "payments"
    with pytest.raises(EmbeddingMismatchError, match="gemma-3-270m"):
        rag.store.document_chunks(tenant, "payments")  # the MiniLM process now refuses it
    gemma_store.delete_tenant(tenant)


def test_embedding_cache_serves_repeats_from_redis(rag: RagServices, key_prefix: str) -> None:
    cached = CachedEmbedder(LocalEmbedder(), rag.redis, key_prefix, ttl_s=60)
    texts = ["the same sentence twice", "and another one"]
    first = cached.embed(texts)
    second = cached.embed(texts)

    assert (cached.misses, cached.hits) == (2, 2)
    assert all(abs(a - b) < 1e-6 for v, w in zip(first, second, strict=True) for a, b in zip(v, w, strict=True))
    assert len(first[0]) == 384
    assert abs(sum(x * x for x in first[0]) - 1.0) < 1e-3  # unit vectors, as the spec records


class CountingEmbedder:
    """Records what reaches the model; a vector is (text length, number of the call that made it)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.calls = 0

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec("counting", 2, True)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        self.seen += texts
        self.calls += 1
        return [[float(len(t)), float(self.calls)] for t in texts]

    def close(self) -> None:
        pass


def test_query_cache_answers_repeats_in_memory_and_forgets_the_least_recently_used() -> None:
    model = CountingEmbedder()
    cache = MemoryCachedEmbedder(model, entries=2)

    first = cache.embed(["a", "bb"])
    repeat = cache.embed(["bb", "a"])
    cache.embed(["a", "ccc"])  # "a" was just used: "bb" is the one forgotten
    last = cache.embed(["a", "bb", "ccc"])

    assert repeat == [first[1], first[0]]  # from memory, in the caller's order
    assert model.seen == ["a", "bb", "ccc", "bb"]
    assert last == [[1.0, 1.0], [2.0, 3.0], [3.0, 2.0]]
    assert (cache.hits, cache.misses) == (5, 4)
