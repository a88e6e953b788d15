"""Ingest: validate and accept documents (caller side), then parse, chunk, embed, store (worker side)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from pathlib import PurePosixPath
from typing import Any

import redis

from core.errors import (
    BusyError,
    EmbeddingMismatchError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    NotFoundError,
    OrchestrionError,
)
from core.settings import RagSettings
from observability.observations import Observation, observe
from rag.chunking import Chunker
from rag.doc_ids import check_doc_id, doc_id_for_path
from rag.documents import DocType
from rag.embedding import Embedder
from rag.filters import Scalar, check_meta_key
from rag.jobs import DELETE_LOCK_WAIT_S, FINAL_STATES, Admission, JobPayload, JobState, JobStatus, JobStore
from rag.parsing import check_readable, detect_type, parse
from rag.store import ChunkStore, DocumentInfo, StoredChunk, now_iso

log = logging.getLogger(__name__)
MAX_TAGS = 32


@dataclass(frozen=True)
class Submission:
    content: bytes
    filename: str | None = None
    media_type: str | None = None
    doc_id: str | None = None
    title: str | None = None
    source: str | None = None
    tags: tuple[str, ...] = ()
    metadata: dict[str, Scalar] = field(default_factory=dict)


@dataclass(frozen=True)
class _Accepted:
    meta: dict[str, Any]
    content: bytes
    content_hash: str


class IngestService:
    def __init__(
        self,
        settings: RagSettings,
        jobs: JobStore,
        store: ChunkStore,
        embedder: Embedder,
        chunker: Chunker,
        enqueue: Callable[[str, Sequence[str]], None],
    ) -> None:
        self.settings = settings
        self.jobs = jobs
        self.store = store
        self.embedder = embedder
        self.chunker = chunker
        self._enqueue = enqueue

    # --- caller side ---------------------------------------------------------------

    def submit(
        self, tenant: str, submissions: Sequence[Submission], idempotency_key: str | None = None
    ) -> list[JobStatus]:
        """Validate every document first (all or none), admit their jobs within the queue limit (all or none),
        then queue them."""
        if not submissions:
            raise InvalidInputError("no documents given")
        check_request_size(self.settings, len(submissions), sum(len(s.content) for s in submissions))
        self.store.require_tenant(tenant)
        accepted = [self._validate(s, position) for position, s in enumerate(submissions)]
        self.store.check_metadata_room([doc.meta["metadata"] for doc in accepted])
        first_of: dict[str, _Accepted] = {}
        for position, doc in enumerate(accepted):
            same_id = first_of.setdefault(str(doc.meta["doc_id"]), doc)
            if same_id.content_hash != doc.content_hash:  # the same document twice is fine: one job
                raise InvalidInputError(
                    f"document {position} has doc_id {doc.meta['doc_id']!r}, like another document of this "
                    "submission: give each its own doc_id"
                )
        keys = [
            f"caller:{idempotency_key}:{position}" if idempotency_key else f"content:{doc.content_hash}"
            for position, doc in enumerate(accepted)
        ]
        docs = [
            (str(d.meta["doc_id"]), key, JobPayload(d.content, d.meta)) for d, key in zip(accepted, keys, strict=True)
        ]
        replaced = [] if idempotency_key else self._replaced_since(tenant, keys, accepted)
        limits = self.settings.ingest_queue_limit, self.settings.ingest_tenant_queue_limit
        admission = self.jobs.admit(tenant, docs, limits[0], replaced, tenant_limit=limits[1])
        self._take_over(admission.taken_over)
        if admission.key_reused_at is not None:
            raise IdempotencyKeyReusedError(
                f"Idempotency-Key {idempotency_key!r} was used for other content (document {admission.key_reused_at} "
                "differs from the first submission's): use a new key for a new submission"
            )
        if admission.refused:
            raise self._refusal(admission)
        self._enqueue_new(tenant, admission, keys)
        return [status for status, _ in admission.jobs]

    def status(self, tenant: str, job_id: str) -> JobStatus:
        return self.jobs.get(tenant, job_id)

    def delete_document(self, tenant: str, doc_id: str) -> int:
        """Delete a document once no job is writing it; a job submitted before the delete then writes nothing."""
        with self.jobs.writing_document(tenant, doc_id, wait_s=DELETE_LOCK_WAIT_S):
            deleted = self.store.delete_document(tenant, doc_id)
            self.jobs.mark_deleted(tenant, doc_id)
            return deleted

    def _replaced_since(self, tenant: str, keys: Sequence[str], accepted: Sequence[_Accepted]) -> list[bool]:
        """Per document: its content's job is done, but the store holds another version of it, or none. That
        job must not answer for it then: deleted or overwritten since, the document is ingested again. Only
        documents whose job is done are looked up in the store: new content (and a refused client's retries)
        cost no Weaviate query."""
        held = self.jobs.held_by(tenant, keys)
        done = [i for i, key in enumerate(keys) if (job := held.get(key)) is not None and job.state == JobState.DONE]
        if not done:
            return []
        stored = self.store.content_hashes(tenant, [str(accepted[i].meta["doc_id"]) for i in done])
        return [i in done and stored.get(str(d.meta["doc_id"])) != d.content_hash for i, d in enumerate(accepted)]

    def _validate(self, sub: Submission, position: int) -> _Accepted:
        name = sub.filename or sub.doc_id or f"document {position}"
        limit = self.settings.max_document_bytes
        if len(sub.content) > limit:
            raise InvalidInputError(
                f"{name} is {len(sub.content):,} bytes, over the limit of {limit:,} bytes "
                "(ORCHESTRION_RAG__MAX_DOCUMENT_BYTES)"
            )
        if not sub.content.strip():
            raise InvalidInputError(f"{name} is empty")
        doc_type = detect_type(sub.filename, sub.media_type, sub.content)
        try:
            check_readable(sub.content, doc_type)
        except InvalidInputError as exc:
            raise InvalidInputError(f"{name}: {exc}") from None
        if sub.doc_id:
            doc_id = check_doc_id(sub.doc_id)
        else:
            doc_id = doc_id_for_filename(sub.filename) or "doc-" + _sha(sub.content)[:16]
        tags = sorted(set(sub.tags))
        if len(tags) > MAX_TAGS or any(not t or len(t) > 64 for t in tags):
            raise InvalidInputError(f"{name}: at most {MAX_TAGS} tags of 1-64 characters each")
        if len(sub.metadata) > self.settings.max_metadata_keys:
            raise InvalidInputError(
                f"{name}: {len(sub.metadata)} metadata keys, over the limit of {self.settings.max_metadata_keys} "
                "per document (ORCHESTRION_RAG__MAX_METADATA_KEYS)"
            )
        for key, value in sub.metadata.items():
            check_meta_key(key)
            if not isinstance(value, str | int | float | bool):
                raise InvalidInputError(f"{name}: metadata {key!r} must be a string, number or boolean")
        meta: dict[str, Any] = {
            "doc_id": doc_id,
            "doc_type": doc_type.value,
            "title": sub.title or "",  # none given: the worker takes the document's own (an H1, a <title>)
            "fallback_title": title_for_filename(sub.filename),
            "source": sub.source or sub.filename or doc_id,
            "tags": tags,
            "metadata": dict(sub.metadata),
        }
        # The job key covers what the document is and says about itself: the same bytes with
        # other metadata are another submission.
        content_hash = _sha(json.dumps(meta, sort_keys=True).encode() + b"\0" + sub.content)
        meta["content_hash"] = content_hash
        return _Accepted(meta, sub.content, content_hash)

    def _refusal(self, admission: Admission) -> OrchestrionError:
        if admission.by_tenant_limit:
            limit, which, setting = self.settings.ingest_tenant_queue_limit, "tenant's ", "INGEST_TENANT_QUEUE_LIMIT"
        else:
            limit, which, setting = self.settings.ingest_queue_limit, "", "INGEST_QUEUE_LIMIT"
        if admission.new > limit:
            return InvalidInputError(
                f"{admission.new} new documents in one submission, over the {which}ingest queue limit of {limit} "
                f"(ORCHESTRION_RAG__{setting}): submit them in parts"
            )
        whose = "of this tenant's " if admission.by_tenant_limit else ""
        return BusyError(
            f"busy: {admission.waiting} {whose}ingest jobs wait to start ({which}limit {limit}) and {admission.ahead} "
            f"refused documents are ahead of yours; nothing was accepted, retry after {admission.retry_after_s}s",
            retry_after_s=admission.retry_after_s,
            reason="tenant_ingest" if admission.by_tenant_limit else "ingest_queue",
        )

    def _enqueue_new(self, tenant: str, admission: Admission, keys: Sequence[str]) -> None:
        """Queue the jobs this submission made, all or none: when they cannot be queued, they are withdrawn and
        the caller retries."""
        pairs = enumerate(zip(admission.jobs, keys, strict=True))
        new = [(position, status, key) for position, ((status, created), key) in pairs if created]
        if not new:
            return
        try:
            self._enqueue(tenant, [status.job_id for _, status, _ in new])
        except Exception as exc:
            for _, status, key in new:
                self.jobs.withdraw(status, key)
            positions = ", ".join(str(position) for position, _, _ in new)
            raise OrchestrionError(
                f"could not queue document(s) {positions} ({type(exc).__name__}): not accepted, retry later"
            ) from exc
        self.jobs.enqueued([status.job_id for _, status, _ in new])

    def _take_over(self, job_ids: Sequence[str]) -> None:
        """Settle jobs whose producer died (or hung) between admitting and enqueuing them."""
        for job_id in job_ids:
            try:
                status = self.jobs.load(job_id)
            except NotFoundError:
                self.jobs.free(job_id)
                continue
            if status.state != JobState.QUEUED:  # withdrawn half-way, or started after all
                self.jobs.free(job_id, status.tenant)
                continue
            try:
                self._enqueue(status.tenant, [job_id])
            except Exception:
                log.warning("could not queue job %s taken over from another producer", job_id, exc_info=True)
                continue  # another submission takes it over after the grace
            self.jobs.enqueued([job_id])
            log.info("queued job %s, admitted by a producer that never confirmed it", job_id)

    # --- worker side ---------------------------------------------------------------

    def run(self, job_id: str) -> JobStatus:
        """Run one job. Safe to run again (a redelivered task): writes are idempotent by chunk id."""
        status = self.jobs.load(job_id)
        # The queue limits bound jobs accepted and not yet started, so the slots go back now.
        self.jobs.started(status.tenant, job_id)
        if status.state in FINAL_STATES:  # a redelivery of a job that ended: its payload is gone, its outcome stays
            return status
        lost, most = status.lost_runs, self.settings.ingest_max_lost_runs
        if lost >= most:  # a document that kills its worker would otherwise be redelivered forever
            reason = f"gave up after {lost} runs whose worker process died (killed, or out of memory on this document)"
            log.warning("ingest job %s failed: %s (RAG__INGEST_MAX_LOST_RUNS=%d)", job_id, reason, most)
            from observability.instruments import DEAD_LETTERS

            DEAD_LETTERS.labels("ingest").inc()
            return self.jobs.update(status, state=JobState.FAILED, error=reason)
        # Recorded with the first stage: the run counts as lost until it ends, for a killed one never says so.
        status.lost_runs, status.started_at = lost + 1, time.time()
        started = time.perf_counter()
        try:
            status = self._run(status)
        except (InvalidInputError, NotFoundError, EmbeddingMismatchError) as exc:
            log.warning("ingest job %s failed: %s", job_id, exc)
            return self.jobs.update(status, state=JobState.FAILED, error=str(exc))
        except Exception:
            # Ended, not lost: Celery retries it or gives it up (workers/tasks.py).
            with contextlib.suppress(redis.RedisError):
                self.jobs.update(status, lost_runs=lost)
            raise
        self.jobs.record_duration(time.perf_counter() - started)
        self._sweep()
        return status

    def _sweep(self) -> None:
        """Workers sweep orphaned payloads as they finish jobs (rag/jobs.py `sweep`): no scheduler to run."""
        try:
            if dropped := self.jobs.sweep(self.settings.ingest_sweep_interval_s):
                log.info("dropped %d orphaned ingest payload(s)", dropped)
        except redis.RedisError:
            log.warning("could not sweep orphaned ingest payloads", exc_info=True)

    def _run(self, status: JobStatus) -> JobStatus:
        payload = self.jobs.payload(status.job_id)
        meta = payload.meta
        tenant, doc_id = status.tenant, str(meta["doc_id"])
        self.jobs.update(status, state=JobState.PARSING, error="")
        # Jobs queued before titles were left to workers carry the parsed title and no fallback.
        fallback = str(meta["title"] or meta.get("fallback_title") or "untitled")
        with _stage("parse", doc_type=meta["doc_type"], bytes=len(payload.content)) as observed:
            parsed = parse(payload.content, DocType(meta["doc_type"]), fallback_title=fallback)
            parsed = replace(parsed, title=str(meta["title"]) or parsed.title)
            observed.metadata(sections=len(parsed.sections))
        self.jobs.update(status, state=JobState.CHUNKING)
        with _stage("chunk") as observed:
            chunks = self.chunker.chunk(parsed)
            observed.metadata(chunks=len(chunks))
        if self._unchanged(tenant, doc_id, str(meta["content_hash"]), len(chunks)):
            result = {"written": 0, "deleted": 0, "unchanged": len(chunks)}
            return self.jobs.update(status, state=JobState.DONE, chunks_total=len(chunks), chunks_done=len(chunks),
                                    result=result)  # fmt: skip
        self.jobs.update(status, state=JobState.EMBEDDING, chunks_total=len(chunks), chunks_done=0)
        vectors: list[list[float]] = []
        batch = self.settings.embed_batch_size
        with _stage("embed", chunks=len(chunks), batch=batch):
            for start in range(0, len(chunks), batch):
                vectors.extend(self.embedder.embed([c.embed_text for c in chunks[start : start + batch]]))
                self.jobs.update(status, chunks_done=len(vectors))
        self.jobs.update(status, state=JobState.STORING)
        info = DocumentInfo(
            doc_id=doc_id,
            title=parsed.title,
            source=str(meta["source"]),
            doc_type=str(meta["doc_type"]),
            tags=list(meta["tags"]),
            metadata=dict(meta["metadata"]),
            content_hash=str(meta["content_hash"]),
            chunk_count=len(chunks),
            ingested_at=now_iso(),
            submitted_at=status.created_at,
        )
        stored = [StoredChunk(c.index, c.text, c.heading_path, _sha(c.embed_text.encode())) for c in chunks]
        with _stage("store", chunks=len(chunks)) as observed, self.jobs.writing_document(tenant, doc_id):
            if (
                self._newer_stored(tenant, doc_id, status.created_at)
                or self.jobs.deleted_at(tenant, doc_id) > status.created_at
            ):
                # A later submission of this document was written first (another worker, a shorter job), or
                # the document was deleted after this one was submitted.
                result = {"written": 0, "deleted": 0, "unchanged": 0, "superseded": 1}
                observed.output(result)
                return self.jobs.update(status, state=JobState.DONE, result=result)
            written = self.store.write_document(tenant, info, stored, vectors)
            observed.output(asdict(written))
        return self.jobs.update(status, state=JobState.DONE, result=asdict(written))

    def _newer_stored(self, tenant: str, doc_id: str, submitted_at: float) -> bool:
        try:
            return self.store.document(tenant, doc_id).submitted_at > submitted_at
        except NotFoundError:
            return False

    def _unchanged(self, tenant: str, doc_id: str, content_hash: str, chunk_count: int) -> bool:
        try:
            current = self.store.document(tenant, doc_id)
        except NotFoundError:
            return False
        return current.content_hash == content_hash and current.chunk_count == chunk_count


def _stage(name: str, **metadata: Any) -> AbstractContextManager[Observation]:
    """One ingest stage's span, under the worker's task span."""
    return observe(f"ingest {name}", metadata=metadata)


def check_request_size(settings: RagSettings, documents: int, total_bytes: int) -> None:
    """One request's documents within the caps of what a server holds for it. Adapters call it as they read
    uploads, before holding them all."""
    if documents > settings.max_documents_per_request:
        raise InvalidInputError(
            f"{documents} documents in one request, over the limit of {settings.max_documents_per_request} "
            "(ORCHESTRION_RAG__MAX_DOCUMENTS_PER_REQUEST): upload them in parts"
        )
    if total_bytes > settings.max_request_bytes:
        raise InvalidInputError(
            f"this request's documents together exceed the limit of {settings.max_request_bytes:,} bytes "
            "(ORCHESTRION_RAG__MAX_REQUEST_BYTES): upload them in parts"
        )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _name(filename: str | None) -> PurePosixPath:
    return PurePosixPath((filename or "").replace("\\", "/"))


def title_for_filename(filename: str | None) -> str:
    """The title of a document that names none: its file name without the extension, as written."""
    return _name(filename).stem.strip() or "untitled"


def doc_id_for_filename(filename: str | None) -> str:
    """The doc id of a document given without one: made from its file name (rag/doc_ids.py); '' for none."""
    name = _name(filename).name
    return doc_id_for_path((name,)) if name else ""
