"""Chunks stored by an earlier version keep working: they get the field keyword search now reads."""

from __future__ import annotations

import json
import math
import uuid

from weaviate.classes.config import Configure
from weaviate.classes.tenants import Tenant

from rag.embedding import EmbeddingSpec
from rag.search_text import SCHEMA_VERSION
from rag.services import RagServices
from rag.store import ChunkStore, _chunk_properties, _doc_properties, collection_names, doc_uuid


def test_chunks_of_an_earlier_version_get_search_text_and_keyword_search_finds_them(rag: RagServices) -> None:
    spec = EmbeddingSpec(f"earlier-{uuid.uuid4().hex[:8]}", 8, True)
    chunks_name, docs_name = collection_names(spec)
    recorded = json.dumps({"orchestrion": 1, "model": spec.model, "dimension": 8, "normalized": True})
    as_made_then = [p for p in _chunk_properties() if p.name != "search_text"]
    for name, properties in ((chunks_name, as_made_then), (docs_name, _doc_properties())):
        rag.weaviate.collections.create(
            name,
            description=recorded,
            properties=properties,
            multi_tenancy_config=Configure.multi_tenancy(enabled=True, auto_tenant_activation=True),
            vector_config=Configure.Vectors.self_provided(),
        )
    try:
        old = rag.weaviate.collections.use(chunks_name)
        for name in (chunks_name, docs_name):
            rag.weaviate.collections.use(name).tenants.create([Tenant(name="acme")])
        chunk = {
            "text": "Refunds are issued within five business days.",
            "title": "Payments guide",
            "heading_path": ["Refunds"],
            "headings": "Refunds",
            "doc_id": "payments",
            "chunk_index": 0,
        }
        old.with_tenant("acme").data.insert(chunk, vector=[1 / math.sqrt(8)] * 8)
        # Its document's record, as every version wrote it (chunks without one are a write that never finished).
        record = {"doc_id": "payments", "title": "Payments guide", "content_hash": "h", "chunk_count": 1}
        rag.weaviate.collections.use(docs_name).with_tenant("acme").data.insert(
            record, uuid=doc_uuid("acme", "payments")
        )

        store = ChunkStore(rag.weaviate, spec)
        store.ensure_collections()

        [stored] = old.with_tenant("acme").query.fetch_objects(return_properties=["search_text"]).objects
        assert (
            stored.properties["search_text"] == "Payments guide\nRefunds\nRefunds are issued within five business days."
        )
        assert json.loads(old.config.get().description or "")["orchestrion"] == SCHEMA_VERSION
        assert store.keyword_fields == ("search_text",)
        # "payments" is only in the title: found through the field the upgrade filled in.
        hits = store.search("acme", mode="keyword", query="payments guide", vector=None, k=5, filters=None,
                            alpha=0.5, fusion="relative_score")  # fmt: skip
        assert [(h.doc_id, h.text) for h in hits] == [("payments", chunk["text"])]
        again = ChunkStore(rag.weaviate, spec)
        again.ensure_collections()  # a second start finds nothing to do
        assert again.keyword_fields == ("search_text",)
    finally:
        for name in (chunks_name, docs_name):
            rag.weaviate.collections.delete(name)
