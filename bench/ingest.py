"""Ingest throughput: the whole pipeline (queue, worker, parse, chunk, embed, Weaviate) vs the bare model.

RAW: `LocalEmbedder` in this process embeds the very chunk texts the pipeline will embed (chunked
beforehand with the same Chunker, outside timing). E2E: every document goes through
`IngestService.submit` to a real Celery queue, a real `orchestrion worker` (1 process, concurrency 1)
and a real weaviate-server; timed from submit until the last job is DONE. The embedding cache is cold
(fresh Redis key prefix, checked: 0 cache keys before); a cache-warm re-ingest is reported apart.

    .venv/bin/python -m bench.ingest [--quick] [--docs N] [--two-workers/--no-two-workers]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from bench._corpus import Doc, sample_docs, stdlib_docs
from bench._report import ERR, OUT, machine_note, progress, table, verdict
from bench._stack import BenchStack, Deployment, bench_stack
from core.settings import Settings
from orchestrion.knowledge import provision
from rag.chunking import Chunker, HFTokenCounter, bundled_model_dir
from rag.documents import ChunkText
from rag.embedding import LocalEmbedder
from rag.ingest import Submission
from rag.jobs import FINAL_STATES, JobState, JobStatus
from rag.parsing import detect_type, parse
from rag.services import RagServices
from rag.store import DocumentInfo, StoredChunk, now_iso

TARGET = 0.80
RAW_SLICE = 1024  # texts per embed() call in the "one call" raw pass: only so the progress bar moves


@dataclass
class Corpus:
    docs: list[Doc]
    chunks: list[list[ChunkText]]
    parse_chunk_s: float

    @property
    def texts(self) -> list[str]:
        return [c.embed_text for doc in self.chunks for c in doc]

    @property
    def total_chunks(self) -> int:
        return sum(len(c) for c in self.chunks)

    @property
    def total_bytes(self) -> int:
        return sum(len(d.content) for d in self.docs)


@dataclass
class Phase:
    name: str
    seconds: float
    chunks: int
    failed: int = 0

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 stdlib documents, one worker only")
    parser.add_argument("--docs", type=int, help="stdlib documents (default 300; --quick 24), plus the 12 samples")
    parser.add_argument(
        "--two-workers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run 2 worker processes (default: on, off with --quick)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up waiting for one phase after this (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    args = parser.parse_args()
    args.docs = args.docs or (24 if args.quick else 300)
    args.two_workers = (not args.quick) if args.two_workers is None else args.two_workers
    return args


def prepare_corpus(n_docs: int, settings: Settings) -> Corpus:
    with ERR.status("rendering stdlib documentation with pydoc…"):
        docs = stdlib_docs(n_docs) + sample_docs()
    counter = HFTokenCounter.from_model_dir(bundled_model_dir(), max_seq_length=256)  # as rag.services does
    chunker = Chunker(counter, settings.rag.chunk_tokens, settings.rag.chunk_overlap_tokens)
    started = time.perf_counter()
    chunks = []
    for doc in docs:
        parsed = parse(doc.content, detect_type(doc.filename, None, doc.content), fallback_title=doc.filename)
        chunks.append(chunker.chunk(parsed))
    return Corpus(docs, chunks, time.perf_counter() - started)


def raw_one_call(embedder: LocalEmbedder, texts: Sequence[str], label: str) -> tuple[Phase, list[list[float]]]:
    """All chunk texts through the model, length-sorted and batched by sentence-transformers (its best case)."""
    vectors: list[list[float]] = []
    with progress() as bar:
        task = bar.add_task(label, total=len(texts), detail="")
        started = time.perf_counter()
        for start in range(0, len(texts), RAW_SLICE):
            vectors.extend(embedder.embed(texts[start : start + RAW_SLICE]))
            bar.update(task, completed=len(vectors), detail=f"{len(vectors) / (time.perf_counter() - started):.1f}/s")
        seconds = time.perf_counter() - started
    return Phase(label, seconds, len(texts)), vectors


def raw_per_document(embedder: LocalEmbedder, corpus: Corpus, batch: int, label: str) -> Phase:
    """The worker's embedding pattern: one document at a time, `batch` chunks per call."""
    done = 0
    with progress() as bar:
        task = bar.add_task(label, total=corpus.total_chunks, detail="")
        started = time.perf_counter()
        for doc in corpus.chunks:
            texts = [c.embed_text for c in doc]
            for start in range(0, len(texts), batch):
                done += len(embedder.embed(texts[start : start + batch]))
            bar.update(task, completed=done)
        seconds = time.perf_counter() - started
    return Phase(label, seconds, done)


def cache_keys(rag: RagServices, prefix: str) -> int:
    return sum(1 for _ in rag.redis.scan_iter(match=f"{prefix}:emb:*", count=1000))


def wait_jobs(rag: RagServices, tenant: str, jobs: list[JobStatus], label: str, timeout: float) -> list[JobStatus]:
    """Poll the job store (only unfinished jobs, every 0.5 s) until every job is final."""
    final: dict[str, JobStatus] = {}
    pending = list(jobs)
    deadline = time.monotonic() + timeout
    with progress() as bar:
        task = bar.add_task(label, total=len(jobs), detail="")
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: {len(pending)} of {len(jobs)} jobs not finished after {timeout:.0f}s")
            time.sleep(0.5)
            current = [rag.ingest.status(tenant, j.job_id) for j in pending]
            final.update({j.job_id: j for j in current if j.state in FINAL_STATES})
            pending = [j for j in current if j.state not in FINAL_STATES]
            chunks = sum(j.chunks_total for j in final.values())
            bar.update(task, completed=len(final), detail=f"{chunks} chunks")
    return [final[j.job_id] for j in jobs]


def submissions(docs: Sequence[Doc]) -> list[Submission]:
    return [Submission(content=d.content, filename=d.filename) for d in docs]


def ingest_phase(rag: RagServices, docs: Sequence[Doc], label: str, timeout: float) -> tuple[Phase, list[JobStatus]]:
    """Submit every document to a fresh tenant; seconds from submit to the last job's final update."""
    tenant = f"ing-{uuid.uuid4().hex[:8]}"
    provision(rag, tenant)
    started = time.time()
    jobs = rag.ingest.submit(tenant, submissions(docs))
    jobs = wait_jobs(rag, tenant, jobs, label, timeout)
    finished = max(j.updated_at for j in jobs)
    failed = [j for j in jobs if j.state != JobState.DONE]
    for job in failed[:5]:
        ERR.print(f"[red]job {job.doc_id} {job.state.value}: {job.error}[/red]")
    return Phase(label, finished - started, sum(j.chunks_total for j in jobs), len(failed)), jobs


def warm_up(rag: RagServices, workers: int, timeout: float) -> None:
    """Load the model in every worker process before timing (2 tiny jobs per worker, prefetch is 1)."""
    docs = [
        Doc(f"warm-{i}.md", f"# Warm-up {i}\n\nLoads the embedding model. {uuid.uuid4()}".encode())
        for i in range(2 * workers)
    ]
    ingest_phase(rag, docs, "warming up workers", timeout)


def run_deployment(stack: BenchStack, corpus: Corpus, workers: int, warm: bool, timeout: float) -> list[Phase]:
    """Cold ingest on `workers` fresh workers (concurrency 1 each); then, if `warm`, a cache-warm re-ingest."""
    deployment: Deployment = stack.deploy(workers=workers, concurrency=1)
    try:
        rag = deployment.open_rag()
        warm_up(rag, workers, timeout)
        before = cache_keys(rag, deployment.prefix)
        if before > 2 * workers:
            raise RuntimeError(f"embedding cache not cold: {before} keys under a fresh prefix")
        label = f"E2E cold cache, {workers} worker process{'es' if workers > 1 else ''} x concurrency 1"
        phases = [ingest_phase(rag, corpus.docs, label, timeout)[0]]
        ERR.print(
            f"embedding cache keys under {deployment.prefix}: {before} before (warm-up only), "
            f"{cache_keys(rag, deployment.prefix)} after"
        )
        if warm:
            label = f"E2E cache-warm re-ingest (new tenant), {workers} worker x 1"
            phases.append(ingest_phase(rag, corpus.docs, label, timeout)[0])
        return phases
    finally:
        deployment.stop()


def weaviate_write(stack: BenchStack, corpus: Corpus, vectors: list[list[float]]) -> Phase:
    """The store step alone: the same chunks and vectors through ChunkStore.write_document, one doc at a time."""
    deployment = stack.deploy(workers=0)
    try:
        rag = deployment.open_rag()
        tenant = f"write-{uuid.uuid4().hex[:8]}"
        provision(rag, tenant)
        position = 0
        started = time.perf_counter()
        for doc, chunks in zip(corpus.docs, corpus.chunks, strict=True):
            doc_vectors = vectors[position : position + len(chunks)]
            position += len(chunks)
            rag.store.write_document(tenant, _info(doc, len(chunks)), _stored(chunks), doc_vectors)
        return Phase("Weaviate writes only (same chunks + vectors)", time.perf_counter() - started, position)
    finally:
        deployment.stop()


def _info(doc: Doc, count: int) -> DocumentInfo:
    digest = hashlib.sha256(doc.content).hexdigest()
    return DocumentInfo(doc.filename, doc.filename, doc.filename, "text", [], {}, digest, count, now_iso())


def _stored(chunks: list[ChunkText]) -> list[StoredChunk]:
    return [
        StoredChunk(c.index, c.text, c.heading_path, hashlib.sha256(c.embed_text.encode()).hexdigest()) for c in chunks
    ]


def report(corpus: Corpus, raws: list[Phase], per_doc: Phase, e2e: list[Phase], write: Phase) -> bool:
    raw_rate = statistics.mean(p.rate for p in raws)
    rows = [
        (p.name, p.chunks, p.seconds, p.rate, "1.000" if p in raws else f"{p.rate / raw_rate:.3f}", p.failed)
        for p in [*raws, per_doc, *e2e]
    ]
    OUT.print(
        table(
            f"Ingest throughput: {len(corpus.docs)} documents, {corpus.total_bytes / 1e6:.2f} MB, "
            f"{corpus.total_chunks} chunks (ratio = rate / mean RAW one-call rate {raw_rate:.2f}/s)",
            ["phase", "chunks", "seconds", "chunks/s", "ratio", "failed jobs"],
            rows,
        )
    )
    cold = e2e[0]
    stages = [
        ("parse + chunk (in-process, once)", corpus.parse_chunk_s),
        ("embed, per document (RAW)", per_doc.seconds),
        ("Weaviate writes (in-process)", write.seconds),
    ]
    accounted = sum(s for _, s in stages)
    stage_rows = [
        *stages,
        ("sum of stages", accounted),
        (cold.name, cold.seconds),
        ("rest: queue, Redis, job bookkeeping, contention", cold.seconds - accounted),
    ]
    OUT.print(table("Where the single-worker E2E time goes (seconds)", ["stage", "seconds"], stage_rows))
    ratio = cold.rate / raw_rate
    met = ratio >= TARGET and cold.failed == 0 and cold.chunks == corpus.total_chunks
    spread = f"RAW runs {', '.join(f'{p.rate:.2f}' for p in raws)}/s"
    OUT.print(
        verdict(
            "ingest e2e/raw (1 worker x 1, cold cache)",
            ratio,
            f">= {TARGET:.2f}",
            met,
            f"e2e {cold.rate:.2f} chunks/s vs raw {raw_rate:.2f} chunks/s; {spread}",
        )
    )
    return met


def main() -> None:
    args = parse_args()
    OUT.print(f"[bold]bench.ingest[/bold] · {machine_note()}")
    settings = Settings()
    corpus = prepare_corpus(args.docs, settings)
    ERR.print(f"corpus: {len(corpus.docs)} docs, {corpus.total_chunks} chunks ({corpus.parse_chunk_s:.1f}s)")
    embedder = LocalEmbedder(settings.rag.embed_batch_size)
    embedder.embed(["load the model before timing"])
    with bench_stack(keep=args.keep) as stack:
        first, vectors = raw_one_call(embedder, corpus.texts, "RAW one call (in-process), before")
        per_doc = raw_per_document(embedder, corpus, settings.rag.embed_batch_size, "RAW per document (in-process)")
        e2e = run_deployment(stack, corpus, 1, True, args.timeout)
        if args.two_workers:
            e2e += run_deployment(stack, corpus, 2, False, args.timeout)
        last, _ = raw_one_call(embedder, corpus.texts, "RAW one call (in-process), after")
        write = weaviate_write(stack, corpus, vectors)
    OUT.print("Embedding cache: every E2E cold phase runs under a fresh Redis key prefix (0 cached vectors).")
    report(corpus, [first, last], per_doc, e2e, write)


if __name__ == "__main__":
    main()
