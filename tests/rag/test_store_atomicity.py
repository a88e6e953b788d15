"""A document switches versions at once for readers, whatever fails mid-write, and a delete never runs beside a
write of the same document."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from weaviate.collections.data import _DataCollection

from core.errors import ConflictError, NotFoundError
from rag import store as store_module
from rag.ingest import Submission
from rag.jobs import JobState, JobStore
from rag.services import RagServices
from rag.store import DocumentInfo, StoredChunk, now_iso
from tests.rag.helpers import GUIDE, ingest_text, wait_jobs


def _write(rag: RagServices, tenant: str, version: str, parts: int) -> None:
    """Version `version` of document 'doc': `parts` chunks saying which version they are."""
    dimension = rag.store.spec.dimension
    info = DocumentInfo("doc", "Doc", "doc.md", "markdown", [], {}, f"hash-{version}", parts, now_iso())
    chunks = [
        StoredChunk(i, f"shared word, version {version} part {i}", ("Doc",), f"{version}-{i}") for i in range(parts)
    ]
    vectors = [[1.0 if j == i else 0.0 for j in range(dimension)] for i in range(parts)]
    rag.store.write_document(tenant, info, chunks, vectors)


def _seen(rag: RagServices, tenant: str) -> tuple[set[str], set[str]]:
    """The versions a reader sees: in the document's chunks, and in a search hitting every chunk."""
    listed = {c.text.split("version ")[1].split()[0] for c in rag.store.document_chunks(tenant, "doc")}
    hits = rag.store.search(tenant, mode="keyword", query="shared word", vector=None, k=50, filters=None, alpha=0.5,
                            fusion="relative_score")  # fmt: skip
    return listed, {h.text.split("version ")[1].split()[0] for h in hits}


def _failing(name: str, after_calls: int = 0) -> Any:
    original = getattr(_DataCollection, name)
    calls = {"n": 0}

    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise RuntimeError(f"injected failure of {name}")
        return original(self, *args, **kwargs)

    return call


def test_a_failure_between_insert_and_delete_shows_one_whole_version(
    rag: RagServices, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(rag, tenant, "one", 3)
    with monkeypatch.context() as patch:
        patch.setattr(_DataCollection, "delete_many", _failing("delete_many"))
        with pytest.raises(RuntimeError, match="injected"):
            _write(rag, tenant, "two", 4)
    # Version one's chunks are still stored, but a reader sees exactly one version, and all of it.
    assert len(rag.store.existing_chunk_ids(tenant, "doc")) == 7
    assert _seen(rag, tenant) == ({"two"}, {"two"})
    assert len(rag.store.document_chunks(tenant, "doc")) == rag.store.document(tenant, "doc").chunk_count == 4

    _write(rag, tenant, "three", 2)  # the next write removes what the failed one left
    assert len(rag.store.existing_chunk_ids(tenant, "doc")) == 2 and _seen(rag, tenant) == ({"three"}, {"three"})


def test_a_failure_while_inserting_leaves_the_old_version_whole_and_nothing_else(
    rag: RagServices, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(rag, tenant, "one", 3)
    with monkeypatch.context() as patch:
        patch.setattr(store_module, "WRITE_BATCH", 2)
        patch.setattr(_DataCollection, "insert_many", _failing("insert_many", after_calls=1))  # the second batch
        with pytest.raises(RuntimeError, match="injected"):
            _write(rag, tenant, "two", 5)
    assert _seen(rag, tenant) == ({"one"}, {"one"}) and rag.store.document(tenant, "doc").content_hash == "hash-one"
    assert len(rag.store.existing_chunk_ids(tenant, "doc")) == 3  # the two it inserted were taken back


def test_a_delete_waits_for_the_write_and_a_job_submitted_before_it_writes_nothing(
    rag: RagServices, tenant: str
) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="doc")
    changed = Submission(GUIDE.replace("five business days", "ten business days").encode(), "doc.md", doc_id="doc")
    deleted: list[int] = []
    with rag.jobs.writing_document(tenant, "doc"):  # a write in flight
        [job] = rag.ingest.submit(tenant, [changed])
        deadline = time.monotonic() + 120
        while rag.ingest.status(tenant, job.job_id).state != JobState.STORING:  # waits for the lock too
            assert time.monotonic() < deadline, rag.ingest.status(tenant, job.job_id)
            time.sleep(0.1)
        deleting = threading.Thread(target=lambda: deleted.append(rag.ingest.delete_document(tenant, "doc")))
        deleting.start()
        time.sleep(1.5)
        assert not deleted and rag.store.document(tenant, "doc")  # the delete waits for the write
    deleting.join(timeout=60)
    [done] = wait_jobs(rag, tenant, [job])

    # Whichever took the lock first, the document the job was submitted before the delete stays deleted.
    assert deleted and deleted[0] > 0 and done.state == JobState.DONE
    with pytest.raises(NotFoundError):
        rag.store.document(tenant, "doc")
    assert rag.store.existing_chunk_ids(tenant, "doc") == set()


def test_a_document_lock_is_renewed_while_held_and_a_waiter_gives_up_after_its_wait(
    rag: RagServices, tenant: str, key_prefix: str
) -> None:
    jobs = JobStore(rag.redis, key_prefix, 600, document_lock_s=1.5)
    with jobs.writing_document(tenant, "doc"):
        time.sleep(4)  # past the lock's own lifetime: renewals keep it
        conflict = pytest.raises(ConflictError, match=r"'doc' was being written for over 1s: retry later")
        with conflict, jobs.writing_document(tenant, "doc", wait_s=1):
            pass
    with jobs.writing_document(tenant, "doc", wait_s=1):  # released at the end
        pass
