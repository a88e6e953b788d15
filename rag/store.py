"""Weaviate storage: one chunk collection per embedding model, one Weaviate tenant per tenant.

Isolation is Weaviate's native multi-tenancy: every read and write goes through
`collection.with_tenant(tenant)`, and each tenant's shard is separate on disk. The
collection's description records the embedding model, dimension and normalisation;
a process embedding with anything else refuses to touch it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from weaviate import WeaviateClient
from weaviate.classes.config import Configure, DataType, Property, Tokenization
from weaviate.classes.data import DataObject
from weaviate.classes.query import Filter, HybridFusion, MetadataQuery, Sort
from weaviate.classes.tenants import Tenant
from weaviate.collections import Collection
from weaviate.exceptions import UnexpectedStatusCodeError, WeaviateBaseError

from core.errors import EmbeddingMismatchError, InvalidInputError, NotFoundError
from rag.embedding import EmbeddingSpec
from rag.filters import Scalar, meta_kind, meta_property, meta_value
from rag.search_text import LEGACY_KEYWORD_FIELDS, SCHEMA_VERSION, search_text, upgrade_chunks

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger(__name__)
CHUNK_NAMESPACE = uuid.UUID("6f1c2a7e-3b1d-4f0a-9a51-0b7c4e2d8a10")
MAX_PAGE = 10_000
WRITE_BATCH = 500  # chunks per insert or delete request


def chunk_uuid(tenant: str, doc_id: str, index: int, content_hash: str, described: str) -> uuid.UUID:
    """Deterministic: the same chunk of the same document version always gets the same id. `described` is
    `described_as(info)`: a chunk also stores what its document says about itself (filters read it there)
    and which version it belongs to, so another version makes new chunks instead of sharing any."""
    return uuid.uuid5(CHUNK_NAMESPACE, f"{tenant}\x1f{doc_id}\x1f{index}\x1f{content_hash}\x1f{described}")


def described_as(info: DocumentInfo) -> str:
    """A digest of the document properties every chunk of it stores."""
    stored = [info.title, info.source, info.doc_type, sorted(info.tags), info.metadata, info.content_hash]
    return hashlib.sha256(json.dumps(stored, sort_keys=True).encode()).hexdigest()[:32]


def doc_uuid(tenant: str, doc_id: str) -> uuid.UUID:
    return uuid.uuid5(CHUNK_NAMESPACE, f"{tenant}\x1f{doc_id}")


def collection_names(spec: EmbeddingSpec) -> tuple[str, str]:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", spec.model).strip("_")
    return f"Chunks_{slug}_{spec.dimension}", f"Docs_{slug}_{spec.dimension}"


@dataclass(frozen=True)
class StoredChunk:
    index: int
    text: str
    heading_path: tuple[str, ...]
    content_hash: str


@dataclass(frozen=True)
class DocumentInfo:
    doc_id: str
    title: str
    source: str
    doc_type: str
    tags: list[str]
    metadata: dict[str, Scalar]
    content_hash: str
    chunk_count: int
    ingested_at: str
    submitted_at: float = 0.0  # when the version stored was submitted (epoch s): an older one never replaces it


@dataclass(frozen=True)
class WriteResult:
    written: int
    deleted: int
    unchanged: int


@dataclass(frozen=True)
class SearchHit:
    text: str
    score: float
    doc_id: str
    source: str
    title: str
    heading_path: list[str]
    chunk_index: int
    doc_type: str
    tags: list[str]


@dataclass
class _TenantCache:
    ttl_s: float = 30.0
    known: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fresh(self, tenant: str) -> bool:
        with self.lock:
            return self.known.get(tenant, 0.0) > time.monotonic()

    def remember(self, tenant: str) -> None:
        with self.lock:
            self.known[tenant] = time.monotonic() + self.ttl_s

    def forget(self, tenant: str) -> None:
        with self.lock:
            self.known.pop(tenant, None)


def _tenant_checked(method: F) -> F:
    """A tenant removed or moved by another process shows up as Weaviate's 'tenant not found':
    drop the cached check and answer with the clear reason instead."""

    @functools.wraps(method)
    def run(self: ChunkStore, tenant: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, tenant, *args, **kwargs)
        except WeaviateBaseError as exc:
            if "tenant not found" not in str(exc):
                raise
            self._tenants.forget(tenant)
            self.require_tenant(tenant)
            raise

    return run  # type: ignore[return-value]


class ChunkStore:
    def __init__(
        self,
        client: WeaviateClient,
        spec: EmbeddingSpec,
        on_use: Callable[[str], None] | None = None,
        max_meta_properties: int | None = None,
    ) -> None:
        """`on_use(tenant)` is called on every read or write of a tenant (see rag/activity.py).
        `max_meta_properties`: most metadata properties writes may give the chunk collection (None: no limit)."""
        self.client = client
        self.spec = spec
        self._on_use = on_use
        self._max_meta = max_meta_properties
        self.chunks_name, self.docs_name = collection_names(spec)
        self._tenants = _TenantCache()
        self._meta_props: set[str] | None = None
        self.keyword_fields: Sequence[str] = ("search_text",)  # the properties BM25 reads

    # --- collections and tenants -------------------------------------------------

    def ensure_collections(self) -> None:
        """Create this model's collections if missing; refuse ones recorded with another embedding."""
        for name, properties in ((self.chunks_name, _chunk_properties()), (self.docs_name, _doc_properties())):
            if not self.client.collections.exists(name):
                try:
                    self.client.collections.create(
                        name,
                        description=json.dumps({"orchestrion": SCHEMA_VERSION, **self._spec_dict()}),
                        properties=properties,
                        multi_tenancy_config=Configure.multi_tenancy(
                            enabled=True, auto_tenant_creation=False, auto_tenant_activation=True
                        ),
                        vector_config=Configure.Vectors.self_provided(),
                    )
                except UnexpectedStatusCodeError:
                    if not self.client.collections.exists(name):  # lost a creation race: fine if it exists now
                        raise
            else:
                self._add_missing_properties(name, properties)
            self._check_recorded_spec(name)
        self._upgrade_chunks()

    def _upgrade_chunks(self) -> None:
        """Until every chunk has `search_text` (filled in here), search reads the fields it had before."""
        self.keyword_fields = LEGACY_KEYWORD_FIELDS
        upgrade_chunks(self.client.collections.use(self.chunks_name))
        self.keyword_fields = ("search_text",)

    def _add_missing_properties(self, name: str, properties: list[Property]) -> None:
        """A collection made by an earlier version gets the properties added since (Weaviate adds them in place)."""
        collection = self.client.collections.use(name)
        existing = {p.name for p in collection.config.get().properties}
        for prop in properties:
            if prop.name not in existing:
                try:
                    collection.config.add_property(prop)
                except UnexpectedStatusCodeError:
                    if prop.name not in {p.name for p in collection.config.get().properties}:  # not a race
                        raise

    def _spec_dict(self) -> dict[str, Any]:
        return {"model": self.spec.model, "dimension": self.spec.dimension, "normalized": self.spec.normalized}

    def _check_recorded_spec(self, name: str) -> None:
        recorded = _recorded_spec(self.client.collections.use(name))
        if recorded is not None and recorded != self._spec_dict():
            raise EmbeddingMismatchError(
                f"collection {name} holds vectors of {recorded['model']} ({recorded['dimension']}-d, "
                f"normalized={recorded['normalized']}), but this process embeds with {self.spec.model} "
                f"({self.spec.dimension}-d, normalized={self.spec.normalized}); configure that model, or run "
                "`orchestrion reindex`"
            )

    def create_tenant(self, tenant: str) -> None:
        for name in (self.chunks_name, self.docs_name):
            collection = self.client.collections.use(name)
            if collection.tenants.get_by_name(tenant) is None:
                collection.tenants.create([Tenant(name=tenant)])
        self._tenants.remember(tenant)
        if self._on_use is not None:
            self._on_use(tenant)

    def delete_tenant(self, tenant: str) -> None:
        self._remove_tenant(tenant, (self.chunks_name, self.docs_name))
        self._tenants.forget(tenant)

    def delete_tenant_everywhere(self, tenant: str) -> bool:
        """Delete the tenant from this model's collections and every other model's (data not yet moved by
        `reindex`). Returns whether it was found anywhere."""
        found = self.has_tenant(tenant)
        self.delete_tenant(tenant)
        for chunks_name, spec in recorded_specs(self.client).items():
            if chunks_name != self.chunks_name:
                found |= self._remove_tenant(tenant, collection_names(EmbeddingSpec(**spec)))
        return found

    def _remove_tenant(self, tenant: str, names: Sequence[str]) -> bool:
        removed = False
        for name in names:
            collection = self.client.collections.use(name)
            if self.client.collections.exists(name) and collection.tenants.get_by_name(tenant) is not None:
                collection.tenants.remove([tenant])
                removed = True
        return removed

    def has_tenant(self, tenant: str) -> bool:
        return self.client.collections.use(self.chunks_name).tenants.get_by_name(tenant) is not None

    def require_tenant(self, tenant: str) -> None:
        """The tenant's data lives in this model's collection; otherwise say where it is, or that it is missing."""
        if self._on_use is not None:
            self._on_use(tenant)
        if self._tenants.fresh(tenant):
            return
        if self.has_tenant(tenant):
            self._tenants.remember(tenant)
            return
        for other, recorded in recorded_specs(self.client).items():
            if other != self.chunks_name and self.client.collections.use(other).tenants.get_by_name(tenant):
                raise EmbeddingMismatchError(
                    f"tenant {tenant!r} was embedded with {recorded['model']} ({recorded['dimension']}-d); this "
                    f"process uses {self.spec.model}: run `orchestrion reindex` to move it to {self.spec.model}, "
                    f"or configure ORCHESTRION_RAG__EMBEDDING_MODEL={recorded['model']}"
                )
        raise NotFoundError(f"tenant {tenant!r} is not provisioned: `orchestrion tenants add {tenant}` creates it")

    def _chunks(self, tenant: str) -> Collection[Any, Any]:
        self.require_tenant(tenant)
        return self.client.collections.use(self.chunks_name).with_tenant(tenant)

    def _docs(self, tenant: str) -> Collection[Any, Any]:
        self.require_tenant(tenant)
        return self.client.collections.use(self.docs_name).with_tenant(tenant)

    # --- writes ------------------------------------------------------------------

    def ensure_metadata_properties(self, metadata: dict[str, Scalar]) -> None:
        """User metadata becomes filterable properties, one per key and type (rag/filters.py `meta_property`),
        created on first use. The names carry the type, so no tenant's choice of type constrains another's."""
        chunks = self.client.collections.use(self.chunks_name)
        self.check_metadata_room([metadata])
        for key, value in metadata.items():
            name = meta_property(key, value)
            if self.has_meta_property(name):
                continue
            kind = meta_kind(value)
            exact = Tokenization.FIELD if kind == "text" else None
            try:
                chunks.config.add_property(Property(name=name, data_type=_META_TYPES[kind], tokenization=exact))
            except UnexpectedStatusCodeError:
                if not self.has_meta_property(name, reread=True):  # not another process adding it meanwhile
                    raise
            if self._meta_props is not None:
                self._meta_props.add(name)

    def check_metadata_room(self, metadata: Sequence[dict[str, Scalar]]) -> None:
        """The properties these documents' metadata would add fit within the limit. The collection is shared by
        every tenant, each new key (and type) one more property in its schema: unbounded, one tenant could grow it
        for all. Processes adding at once may pass it by one property each."""
        if self._max_meta is None:
            return
        wanted = {meta_property(k, v): f"{k!r} ({meta_kind(v)})" for m in metadata for k, v in m.items()}
        known = self._meta_properties(reread=not set(wanted) <= (self._meta_props or set()))
        missing = sorted(label for name, label in wanted.items() if name not in known)
        if len(known) + len(missing) > self._max_meta:
            raise InvalidInputError(
                f"metadata {', '.join(missing)} would add {len(missing)} filterable properties to the {len(known)} "
                f"that every tenant's documents share, over the limit of {self._max_meta} "
                "(ORCHESTRION_RAG__MAX_METADATA_PROPERTIES): use metadata keys already in use, or fewer"
            )

    def has_meta_property(self, name: str, reread: bool = False) -> bool:
        """Whether the chunk collection has this metadata property. Other processes add them (the workers, as
        documents come in): a name this process has not seen is looked up again before it is said to be missing."""
        return name in self._meta_properties(reread or name not in (self._meta_props or set()))

    def _meta_properties(self, reread: bool) -> set[str]:
        if reread or self._meta_props is None:
            properties = self.client.collections.use(self.chunks_name).config.get().properties
            self._meta_props = {p.name for p in properties if p.name.startswith("meta_")}
        return self._meta_props

    @_tenant_checked
    def existing_chunk_ids(self, tenant: str, doc_id: str) -> set[uuid.UUID]:
        chunks = self._chunks(tenant)
        found: set[uuid.UUID] = set()
        offset = 0
        while True:
            page = chunks.query.fetch_objects(
                filters=Filter.by_property("doc_id").equal(doc_id), limit=MAX_PAGE, offset=offset, return_properties=[]
            ).objects
            found.update(o.uuid for o in page)
            if len(page) < MAX_PAGE:
                return found
            offset += MAX_PAGE

    @_tenant_checked
    def write_document(
        self, tenant: str, info: DocumentInfo, chunks: Sequence[StoredChunk], vectors: Sequence[Sequence[float]]
    ) -> WriteResult:
        """Make the stored document exactly `chunks`, switching versions at once for readers: every chunk records
        its document's version (`info.content_hash`) and reads keep only the version the document record names.
        So: insert the new version's chunks (unseen), then flip the record, then delete the old version's.
        A failure before the flip removes what it inserted (the old version stays whole); one after it leaves
        old chunks nobody reads, which the next write or delete of the document removes."""
        if len(chunks) != len(vectors):
            raise ValueError("one vector per chunk")
        self.ensure_metadata_properties(info.metadata)
        existing = self.existing_chunk_ids(tenant, info.doc_id)
        described = described_as(info)
        ids = [chunk_uuid(tenant, info.doc_id, c.index, c.content_hash, described) for c in chunks]
        base = {
            "doc_id": info.doc_id,
            "source": info.source,
            "title": info.title,
            "doc_type": info.doc_type,
            "tags": info.tags,
            "ingested_at": info.ingested_at,
            "doc_version": info.content_hash,
            **{meta_property(k, v): meta_value(v) for k, v in info.metadata.items()},
        }
        new = [
            DataObject(
                properties={
                    **base,
                    "text": c.text,
                    "heading_path": list(c.heading_path),
                    "headings": " > ".join(c.heading_path),
                    "search_text": search_text(info.title, c.heading_path, c.text),
                    "chunk_index": c.index,
                    "content_hash": c.content_hash,
                },
                uuid=cid,
                vector=list(v),
            )
            for c, cid, v in zip(chunks, ids, vectors, strict=True)
            if cid not in existing
        ]
        collection = self._chunks(tenant)
        try:
            for start in range(0, len(new), WRITE_BATCH):
                result = collection.data.insert_many(new[start : start + WRITE_BATCH])
                if result.has_errors:
                    first = next(iter(result.errors.values()))
                    raise RuntimeError(f"Weaviate rejected {len(result.errors)} chunk(s): {first.message}")
            result = self._docs(tenant).data.insert_many(
                [DataObject(properties=_doc_props(info), uuid=doc_uuid(tenant, info.doc_id))]
            )
            if result.has_errors:
                raise RuntimeError(f"Weaviate rejected the record of {info.doc_id!r}: {result.errors[0].message}")
        except Exception:
            self._cleanup(tenant, info, [cid for cid in ids if cid not in existing])
            raise
        stale = list(existing - set(ids))
        self._delete_chunks(collection, stale)
        return WriteResult(written=len(new), deleted=len(stale), unchanged=len(chunks) - len(new))

    def _cleanup(self, tenant: str, info: DocumentInfo, inserted: Sequence[uuid.UUID]) -> None:
        """A write that failed before its flip takes back what it inserted; if that fails too, the chunks stay
        unread (not of the version the record names) until the next write or delete of the document."""
        try:
            if self.content_hashes(tenant, [info.doc_id]).get(info.doc_id) == info.content_hash:
                return  # the flip went through after all (a reply lost), or this version was current already
            self._delete_chunks(self._chunks(tenant), inserted)
        except WeaviateBaseError:
            log.warning("could not remove %d chunk(s) of a failed write of %s", len(inserted), tenant, exc_info=True)

    @staticmethod
    def _delete_chunks(collection: Collection[Any, Any], ids: Sequence[uuid.UUID]) -> None:
        for start in range(0, len(ids), WRITE_BATCH):
            collection.data.delete_many(where=Filter.by_id().contains_any(list(ids[start : start + WRITE_BATCH])))

    @_tenant_checked
    def delete_document(self, tenant: str, doc_id: str) -> int:
        stale = list(self.existing_chunk_ids(tenant, doc_id))
        self._delete_chunks(self._chunks(tenant), stale)
        docs = self._docs(tenant)
        if docs.data.exists(doc_uuid(tenant, doc_id)):
            docs.data.delete_by_id(doc_uuid(tenant, doc_id))
        elif not stale:
            raise NotFoundError(f"no document {doc_id!r}")
        return len(stale)

    # --- reads -------------------------------------------------------------------

    @_tenant_checked
    def content_hashes(self, tenant: str, doc_ids: Sequence[str]) -> dict[str, str]:
        """The content hash of each of these documents that the tenant holds now."""
        ids = sorted({doc_uuid(tenant, d) for d in doc_ids}, key=str)
        docs, found = self._docs(tenant), {}
        for start in range(0, len(ids), 500):
            part = ids[start : start + 500]
            page = docs.query.fetch_objects(
                filters=Filter.by_id().contains_any(part), limit=len(part), return_properties=["doc_id", "content_hash"]
            )
            found.update({str(o.properties["doc_id"]): str(o.properties["content_hash"]) for o in page.objects})
        return found

    @_tenant_checked
    def document(self, tenant: str, doc_id: str) -> DocumentInfo:
        found = self._docs(tenant).query.fetch_object_by_id(doc_uuid(tenant, doc_id))
        if found is None:
            raise NotFoundError(f"no document {doc_id!r}")
        return _doc_info(found.properties)

    @_tenant_checked
    def document_chunks(self, tenant: str, doc_id: str) -> list[SearchHit]:
        """All chunks of one document's current version, in order."""
        version = self.document(tenant, doc_id).content_hash
        chunks = self._chunks(tenant)
        hits: list[SearchHit] = []
        offset = 0
        while True:  # a 10 MB document can hold more chunks than one page
            page = chunks.query.fetch_objects(
                filters=Filter.by_property("doc_id").equal(doc_id),
                sort=Sort.by_property("chunk_index", ascending=True),
                limit=MAX_PAGE,
                offset=offset,
            ).objects
            offset += len(page)
            hits.extend(_hit(o.properties, 1.0) for o in page if _current(o.properties, {doc_id: version}))
            if len(page) < MAX_PAGE:
                return hits

    @_tenant_checked
    def list_documents(self, tenant: str, limit: int, offset: int) -> list[DocumentInfo]:
        objects = (
            self._docs(tenant)
            .query.fetch_objects(sort=Sort.by_property("doc_id", ascending=True), limit=limit, offset=offset)
            .objects
        )
        return [_doc_info(o.properties) for o in objects]

    @_tenant_checked
    def search(
        self,
        tenant: str,
        *,
        mode: str,
        query: str,
        vector: Sequence[float] | None,
        k: int,
        filters: Any,
        alpha: float,
        fusion: str,
    ) -> list[SearchHit]:
        chunks = self._chunks(tenant).query
        if mode == "vector":
            found = chunks.near_vector(
                list(vector or []), limit=k, filters=filters, return_metadata=MetadataQuery(distance=True)
            )
            # Cosine distance of unit vectors is in [0, 2]; report a similarity in [-1, 1].
            objects = self._current_only(tenant, found.objects)
            return [_hit(o.properties, 1.0 - float(o.metadata.distance or 0.0)) for o in objects]
        if mode == "keyword":
            found = chunks.bm25(
                query, query_properties=list(self.keyword_fields), limit=k, filters=filters,
                return_metadata=MetadataQuery(score=True),
            )  # fmt: skip
        else:
            found = chunks.hybrid(
                query,
                vector=list(vector or []),
                alpha=alpha,
                fusion_type=HybridFusion.RANKED if fusion == "ranked" else HybridFusion.RELATIVE_SCORE,
                query_properties=list(self.keyword_fields),
                limit=k,
                filters=filters,
                return_metadata=MetadataQuery(score=True),
            )
        return [_hit(o.properties, float(o.metadata.score or 0.0)) for o in self._current_only(tenant, found.objects)]

    def _current_only(self, tenant: str, objects: Sequence[Any]) -> list[Any]:
        """The hits of the versions their document records name: none of a write not yet flipped (or of a new
        document not yet recorded), none of a replaced version not yet deleted. Such hits are dropped, not
        replaced, so a search during a write or after a failed cleanup may return fewer than k."""
        versions = self.content_hashes(tenant, [str(o.properties["doc_id"]) for o in objects]) if objects else {}
        return [o for o in objects if _current(o.properties, versions)]


def _current(props: Any, versions: dict[str, str]) -> bool:
    """A chunk of its document's current version. Chunks written before versions were recorded (no
    `doc_version`) belong to whatever version the record names."""
    doc_id = str(props.get("doc_id") or "")
    return doc_id in versions and (props.get("doc_version") or versions[doc_id]) == versions[doc_id]


def recorded_specs(client: WeaviateClient) -> dict[str, dict[str, Any]]:
    """Every Orchestrion chunk collection and the embedding spec it records."""
    found = {}
    for name in client.collections.list_all(simple=True):
        if name.startswith("Chunks_"):
            spec = _recorded_spec(client.collections.use(name))
            if spec is not None:
                found[name] = spec
    return found


def _recorded_spec(collection: Collection[Any, Any]) -> dict[str, Any] | None:
    try:
        recorded = json.loads(collection.config.get().description or "")
    except ValueError:
        return None
    if not isinstance(recorded, dict) or "model" not in recorded:
        return None
    return {"model": recorded["model"], "dimension": recorded["dimension"], "normalized": recorded["normalized"]}


def _chunk_properties() -> list[Property]:
    return [
        Property(name="text", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        Property(name="title", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        Property(name="headings", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        # What keyword search reads: title, headings and text as one field (see search_text).
        Property(name="search_text", data_type=DataType.TEXT, tokenization=Tokenization.WORD, index_filterable=False),
        Property(name="heading_path", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
        Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="doc_type", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="tags", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
        Property(name="chunk_index", data_type=DataType.INT),
        Property(name="content_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="ingested_at", data_type=DataType.DATE),
        # The document version the chunk belongs to (its record's content_hash): reads keep the current one.
        Property(name="doc_version", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
    ]


def _doc_properties() -> list[Property]:
    return [
        Property(name="doc_id", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="title", data_type=DataType.TEXT, tokenization=Tokenization.WORD),
        Property(name="source", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="doc_type", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="tags", data_type=DataType.TEXT_ARRAY, tokenization=Tokenization.FIELD),
        Property(name="metadata_json", data_type=DataType.TEXT, index_filterable=False, index_searchable=False),
        Property(name="content_hash", data_type=DataType.TEXT, tokenization=Tokenization.FIELD),
        Property(name="chunk_count", data_type=DataType.INT),
        Property(name="ingested_at", data_type=DataType.DATE),
        Property(name="submitted_at", data_type=DataType.NUMBER),
    ]


_META_TYPES = {"text": DataType.TEXT, "number": DataType.NUMBER, "bool": DataType.BOOL}


def _doc_props(info: DocumentInfo) -> dict[str, Any]:
    return {
        "doc_id": info.doc_id,
        "title": info.title,
        "source": info.source,
        "doc_type": info.doc_type,
        "tags": info.tags,
        "metadata_json": json.dumps(info.metadata, sort_keys=True),
        "content_hash": info.content_hash,
        "chunk_count": info.chunk_count,
        "ingested_at": info.ingested_at,
        "submitted_at": info.submitted_at,
    }


def _doc_info(props: dict[str, Any]) -> DocumentInfo:
    return DocumentInfo(
        doc_id=str(props["doc_id"]),
        title=str(props.get("title") or ""),
        source=str(props.get("source") or ""),
        doc_type=str(props.get("doc_type") or ""),
        tags=list(props.get("tags") or []),
        metadata=json.loads(props.get("metadata_json") or "{}"),
        content_hash=str(props.get("content_hash") or ""),
        chunk_count=int(props.get("chunk_count") or 0),
        ingested_at=_iso(props.get("ingested_at")),
        submitted_at=float(props.get("submitted_at") or 0.0),
    )


def _hit(props: dict[str, Any], score: float) -> SearchHit:
    return SearchHit(
        text=str(props.get("text") or ""),
        score=round(score, 6),
        doc_id=str(props.get("doc_id") or ""),
        source=str(props.get("source") or ""),
        title=str(props.get("title") or ""),
        heading_path=list(props.get("heading_path") or []),
        chunk_index=int(props.get("chunk_index") or 0),
        doc_type=str(props.get("doc_type") or ""),
        tags=list(props.get("tags") or []),
    )


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value or "")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
