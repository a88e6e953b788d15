"""Ingest through the real queue into real Weaviate, and read it back with citations."""

from __future__ import annotations

import time

import pytest

from core.errors import IdempotencyKeyReusedError, InvalidInputError, NotFoundError
from rag import store as store_module
from rag.ingest import IngestService, Submission
from rag.jobs import JobState
from rag.search import SearchRequest, search
from rag.services import RagServices
from rag.store import DocumentInfo, StoredChunk, now_iso
from tests.rag.helpers import GUIDE, ingest_text, wait_jobs


def test_ingested_document_reads_back_in_order_with_heading_paths(rag: RagServices, tenant: str) -> None:
    job = ingest_text(rag, tenant, GUIDE, doc_id="payments", tags=("billing",), metadata={"year": 2025})

    chunks = rag.store.document_chunks(tenant, "payments")
    info = rag.store.document(tenant, "payments")

    assert job.result["written"] == len(chunks) == info.chunk_count >= 3
    assert [c.chunk_index for c in chunks] == list(range(len(chunks)))
    assert info.title == "Payments guide" and info.doc_type == "markdown" and info.tags == ["billing"]
    assert info.metadata == {"year": 2025}
    paths = [tuple(c.heading_path) for c in chunks]
    assert ("Payments guide", "Refunds", "Partial refunds") in paths
    assert any("charged once" in c.text for c in chunks)


@pytest.mark.parametrize("mode", ["vector", "keyword", "hybrid"])
def test_search_modes_cite_the_right_passage(rag: RagServices, tenant: str, mode: str) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="payments")
    question = {
        "vector": "what stops a customer from paying twice when the app retries?",
        "keyword": "idempotency key retries",
        "hybrid": "idempotency key when the client retries",
    }[mode]

    hits = search(rag.store, rag.embedder, tenant, SearchRequest(query=question, mode=mode, k=3))

    top = hits[0]
    assert "Idempotency" in top.heading_path
    assert top.doc_id == "payments" and top.source == "doc.md" and top.title == "Payments guide"
    assert top.score > 0


def test_same_submission_twice_is_the_same_job(rag: RagServices, tenant: str) -> None:
    doc = Submission(content=GUIDE.encode(), filename="guide.md")
    [first] = rag.ingest.submit(tenant, [doc])
    [second] = rag.ingest.submit(tenant, [doc])
    assert second.job_id == first.job_id
    [keyed] = rag.ingest.submit(tenant, [doc], idempotency_key="upload-42")
    [again] = rag.ingest.submit(tenant, [doc], idempotency_key="upload-42")
    assert again.job_id == keyed.job_id != first.job_id
    wait_jobs(rag, tenant, [first, keyed])


def test_reingesting_unchanged_document_writes_nothing(rag: RagServices, tenant: str) -> None:
    first = ingest_text(rag, tenant, GUIDE, doc_id="payments")
    before = {(c.chunk_index, c.text) for c in rag.store.document_chunks(tenant, "payments")}
    [again] = rag.ingest.submit(tenant, [Submission(GUIDE.encode(), "doc.md", doc_id="payments")], "second-upload")
    [again] = wait_jobs(rag, tenant, [again])

    assert again.job_id != first.job_id
    assert again.result == {"written": 0, "deleted": 0, "unchanged": first.result["written"]}
    assert {(c.chunk_index, c.text) for c in rag.store.document_chunks(tenant, "payments")} == before


def test_changed_document_replaces_its_chunks_and_leaves_no_stale_ones(rag: RagServices, tenant: str) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="payments")
    changed = GUIDE.replace("five business days", "ten business days").split("### Partial refunds")[0]
    job = ingest_text(rag, tenant, changed, doc_id="payments")

    chunks = rag.store.document_chunks(tenant, "payments")
    texts = " ".join(c.text for c in chunks)
    assert "ten business days" in texts and "five business days" not in texts
    assert "Partial refunds" not in {h for c in chunks for h in c.heading_path}
    assert job.result["deleted"] >= 1
    assert len(chunks) == rag.store.document(tenant, "payments").chunk_count
    assert len(rag.store.existing_chunk_ids(tenant, "payments")) == len(chunks)


def test_a_deleted_or_overwritten_document_is_ingested_again_from_the_same_content(
    rag: RagServices, tenant: str
) -> None:
    first = ingest_text(rag, tenant, GUIDE, doc_id="guide")
    rag.store.delete_document(tenant, "guide")
    again = ingest_text(rag, tenant, GUIDE, doc_id="guide")
    assert again.job_id != first.job_id and again.result["written"] == first.result["written"]

    ingest_text(rag, tenant, GUIDE.replace("five business days", "ten business days"), doc_id="guide")
    back = ingest_text(rag, tenant, GUIDE, doc_id="guide")  # version 1 again, after version 2
    assert back.job_id not in (first.job_id, again.job_id)
    texts = " ".join(c.text for c in rag.store.document_chunks(tenant, "guide"))
    assert "five business days" in texts and "ten business days" not in texts

    # While the store holds this very version, the same submission is still answered by its job.
    [same] = rag.ingest.submit(tenant, [Submission(GUIDE.encode(), "doc.md", doc_id="guide")])
    assert same.job_id == back.job_id


def test_new_tags_and_metadata_reach_every_chunk(rag: RagServices, tenant: str) -> None:
    first = ingest_text(rag, tenant, GUIDE, doc_id="tagged", tags=("draft",), metadata={"owner": "ann"})
    job = ingest_text(rag, tenant, GUIDE, doc_id="tagged", tags=("final",), metadata={"owner": "bob"})
    count = first.result["written"]
    assert job.result == {"written": count, "deleted": count, "unchanged": 0}

    def found(filters: dict[str, object]) -> list[str]:
        request = SearchRequest.model_validate({"query": "refund", "mode": "keyword", "k": 50, "filters": filters})
        return sorted({h.doc_id for h in search(rag.store, rag.embedder, tenant, request)})

    assert found({"field": "tags", "op": "any_of", "value": ["final"]}) == ["tagged"]
    assert found({"field": "tags", "op": "any_of", "value": ["draft"]}) == []
    assert found({"field": "meta.owner", "op": "eq", "value": "bob"}) == ["tagged"]
    assert found({"field": "meta.owner", "op": "eq", "value": "ann"}) == []
    assert len(rag.store.existing_chunk_ids(tenant, "tagged")) == count


def test_an_idempotency_key_reused_for_other_content_is_refused(rag: RagServices, tenant: str) -> None:
    doc = Submission(GUIDE.encode(), "guide.md")
    [first] = rag.ingest.submit(tenant, [doc], idempotency_key="upload-7")
    other = Submission(b"# Other\n\nA different document.", "guide.md")
    with pytest.raises(IdempotencyKeyReusedError, match=r"'upload-7' was used for other content \(document 0"):
        rag.ingest.submit(tenant, [other], idempotency_key="upload-7")
    [again] = rag.ingest.submit(tenant, [doc], idempotency_key="upload-7")
    assert again.job_id == first.job_id
    wait_jobs(rag, tenant, [first])


def test_a_document_longer_than_a_page_reads_back_whole(
    rag: RagServices, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Weaviate answers a page at a time (10,000 objects here, a 10 MB document holds more): 3 in this test."""
    monkeypatch.setattr(store_module, "MAX_PAGE", 3)
    dimension = rag.store.spec.dimension
    info = DocumentInfo("long", "Long", "long.md", "markdown", [], {}, "digest", 7, now_iso())
    chunks = [StoredChunk(i, f"part {i}", ("Long",), f"hash-{i}") for i in range(7)]
    vectors = [[1.0 if j == i else 0.0 for j in range(dimension)] for i in range(7)]
    rag.store.write_document(tenant, info, chunks, vectors)
    assert [(h.chunk_index, h.text) for h in rag.store.document_chunks(tenant, "long")] == [
        (i, f"part {i}") for i in range(7)
    ]
    assert len(rag.store.existing_chunk_ids(tenant, "long")) == 7


def test_a_documents_write_waits_while_another_write_of_it_holds_the_document(rag: RagServices, tenant: str) -> None:
    """Two versions written at once would each keep their chunks behind one record: writes take turns."""
    with rag.jobs.writing_document(tenant, "locked"):
        [job] = rag.ingest.submit(tenant, [Submission(GUIDE.encode(), "doc.md", doc_id="locked")])
        deadline = time.monotonic() + 120
        while rag.ingest.status(tenant, job.job_id).state != JobState.STORING:
            assert time.monotonic() < deadline, rag.ingest.status(tenant, job.job_id)
            time.sleep(0.1)
        time.sleep(1.5)
        assert rag.ingest.status(tenant, job.job_id).state == JobState.STORING  # waiting for the lock
        with pytest.raises(NotFoundError):
            rag.store.document(tenant, "locked")
    [done] = wait_jobs(rag, tenant, [job])
    assert done.state == JobState.DONE and rag.store.document(tenant, "locked").chunk_count > 0


def test_two_documents_of_one_submission_cannot_share_a_doc_id(rag: RagServices, tenant: str) -> None:
    one = Submission(b"# One\n\nThe first.", "a/README.md", doc_id="README.md")
    other = Submission(b"# Other\n\nThe second.", "b/README.md", doc_id="README.md")
    with pytest.raises(InvalidInputError, match=r"document 1 has doc_id 'README\.md', like another"):
        rag.ingest.submit(tenant, [one, other])
    assert rag.store.list_documents(tenant, 10, 0) == []
    [job, again] = rag.ingest.submit(tenant, [one, one])  # the same document twice: one job
    assert job.job_id == again.job_id
    wait_jobs(rag, tenant, [job])


@pytest.mark.parametrize(
    ("submission", "message"),
    [
        (Submission(b"PK\x03\x04 zip bytes", filename="report.docx"), "unsupported"),
        (Submission(b"   \n\n ", filename="empty.md"), "empty"),
        (Submission(b"caf\xe9 au lait", filename="latin1.txt"), "UTF-8"),
        (Submission(b"no header at all", filename="broken.pdf"), "not a PDF: no %PDF- header"),
        (Submission(b"<html><body>caf\xe9</body></html>", filename="latin1.html"), "UTF-8"),
        (Submission(b"fine", filename="a.md", doc_id="bad id with spaces"), "doc_id"),
        (Submission(b"fine", filename="a.md", metadata={"Bad-Key": 1}), "metadata key"),
    ],
)
def test_bad_input_is_refused_with_its_reason_and_nothing_is_written(
    rag: RagServices, tenant: str, submission: Submission, message: str
) -> None:
    good = Submission(b"# Fine\n\nA good document.", filename="good.md")
    with pytest.raises(InvalidInputError, match=message):
        rag.ingest.submit(tenant, [good, submission])  # all or nothing
    assert rag.store.list_documents(tenant, 10, 0) == []
    assert not rag.redis.keys(f"{rag.settings.redis.key_prefix}:idem:{tenant}:*")


def test_document_over_the_size_limit_names_the_limit(rag: RagServices, tenant: str) -> None:
    limit = rag.settings.rag.max_document_bytes
    with pytest.raises(InvalidInputError, match=f"limit of {limit:,} bytes"):
        rag.ingest.submit(tenant, [Submission(b"a" * (limit + 1), filename="big.txt")])


def test_a_malformed_pdf_is_accepted_and_fails_on_the_worker_with_its_reason(rag: RagServices, tenant: str) -> None:
    """Servers check a document's size, type and encoding; only workers parse it (an untrusted parser's crash or
    bomb must not reach the API process)."""
    [job] = rag.ingest.submit(tenant, [Submission(b"%PDF-1.4 this is no pdf", filename="broken.pdf")])
    assert job.state == JobState.QUEUED
    [failed] = wait_jobs(rag, tenant, [job])
    assert failed.state == JobState.FAILED and "could not read PDF" in failed.error, failed.error
    assert not rag.redis.exists(f"{rag.settings.redis.key_prefix}:jobdata:{job.job_id}")  # its bytes went with it
    with pytest.raises(NotFoundError):
        rag.store.document(tenant, job.doc_id)


def test_a_document_without_a_title_takes_its_own_from_the_worker(rag: RagServices, tenant: str) -> None:
    job = ingest_text(rag, tenant, "<html><head><title>Kept title</title></head><body><p>Body.</p></body></html>",
                      filename="page.html")  # fmt: skip
    assert rag.store.document(tenant, job.doc_id).title == "Kept title"
    named = ingest_text(rag, tenant, "# Own heading\n\nBody.", filename="named.md", title="Given title")
    assert rag.store.document(tenant, named.doc_id).title == "Given title"
    bare = ingest_text(rag, tenant, "no heading here", filename="Bare name.txt")
    assert rag.store.document(tenant, bare.doc_id).title == "Bare name"


def test_a_request_over_the_document_or_byte_cap_is_refused_whole(rag: RagServices, tenant: str) -> None:
    caps = rag.settings.rag.model_copy(update={"max_documents_per_request": 3, "max_request_bytes": 100})
    service = IngestService(caps, rag.jobs, rag.store, rag.embedder, rag.ingest.chunker,
                            lambda _tenant, _ids: pytest.fail("a refused request was queued"))  # fmt: skip
    four = [Submission(f"# Note {i}".encode(), f"n{i}.md") for i in range(4)]
    with pytest.raises(InvalidInputError, match=r"4 documents in one request, over the limit of 3 \(ORCHESTRION_RAG__"):
        service.submit(tenant, four)
    big = [Submission(b"x" * 60, "a.txt"), Submission(b"y" * 60, "b.txt")]
    with pytest.raises(InvalidInputError, match=r"together exceed the limit of 100 bytes \(ORCHESTRION_RAG__MAX_REQ"):
        service.submit(tenant, big)
    assert not rag.redis.keys(f"{rag.settings.redis.key_prefix}:idem:{tenant}:*")
