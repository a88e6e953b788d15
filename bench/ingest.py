"""Ingest throughput: the whole pipeline (queue, worker, parse, chunk, embed, Weaviate) vs the bare model.

RAW: `LocalEmbedder` in this process embeds the very chunk texts the pipeline will embed (chunked
beforehand with the same Chunker and title, outside timing) in one call per round, so that
sentence-transformers sorts and batches them (the model's best case). E2E: the same documents go
through `IngestService.submit` to a real Celery queue, ONE real `orchestrion worker` process with
concurrency 1, and a real weaviate-server; timed from submit until the last job's final update.

The corpus is split into interleaved rounds (RAW part 1, E2E part 1, RAW part 2, ...), so load changes
on a shared machine hit both sides alike. Beside wall-clock rates, CPU seconds per chunk (this process +
every stack process) are reported: they are far less sensitive to noise from other tenants of the machine.

The embedding cache is cold: the E2E phase runs under a fresh Redis key prefix, and the bench checks that
none of the corpus's chunk vectors is cached before it starts. A cache-warm re-ingest (same documents, new
tenant, same prefix) is reported on its own line, and so is a run on 2 worker processes.

    .venv/bin/python -m bench.ingest [--quick] [--docs N] [--rounds R] [--two-workers/--no-two-workers]
"""

from __future__ import annotations

import argparse
import hashlib
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from bench._corpus import Doc, sample_docs, stdlib_docs
from bench._report import ERR, OUT, machine_note, progress, table, verdict
from bench._stack import BenchStack, add_env_option, bench_stack, env_from
from core.settings import Settings
from orchestrion.knowledge import provision
from rag.chunking import Chunker, HFTokenCounter, bundled_model_dir
from rag.documents import ChunkText
from rag.embedding import LocalEmbedder
from rag.ingest import (
    Submission,
    title_for_filename,  # the fallback title IngestService gives a file: same chunk texts
)
from rag.jobs import FINAL_STATES, JobState, JobStatus
from rag.parsing import detect_type, parse
from rag.services import RagServices
from rag.store import DocumentInfo, StoredChunk, now_iso

TARGET = 0.80
ROLES = ("bench", "workers", "weaviate", "redis")
RAW_SLICE = 1024  # texts per embed() call in a RAW pass: only so the progress bar moves
T = TypeVar("T")


@dataclass
class Corpus:
    docs: list[Doc]
    chunks: list[list[ChunkText]]
    parse_chunk_s: float

    def texts(self, indexes: Sequence[int] | None = None) -> list[str]:
        chosen = range(len(self.docs)) if indexes is None else indexes
        return [c.embed_text for i in chosen for c in self.chunks[i]]

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
    cpu: float = 0.0
    failed: int = 0
    roles: dict[str, float] = field(default_factory=dict)  # CPU seconds by process role

    @property
    def rate(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_chunk(self) -> float:
        return 1000 * self.cpu / self.chunks if self.chunks else 0.0


def total(name: str, phases: Sequence[Phase]) -> Phase:
    roles = {role: sum(p.roles.get(role, 0.0) for p in phases) for role in ROLES}
    return Phase(
        name,
        sum(p.seconds for p in phases),
        sum(p.chunks for p in phases),
        sum(p.cpu for p in phases),
        sum(p.failed for p in phases),
        roles,
    )


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {role: after.get(role, 0.0) - before.get(role, 0.0) for role in ROLES}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 stdlib documents, 2 rounds, 1 worker")
    parser.add_argument("--docs", type=int, help="stdlib documents (default 300; --quick 24), plus the 12 samples")
    parser.add_argument("--rounds", type=int, help="interleaved RAW/E2E rounds (default 3; --quick 2)")
    parser.add_argument(
        "--two-workers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also ingest with 2 worker processes (default: on; off with --quick)",
    )
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up waiting for one phase after this (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    add_env_option(parser)
    args = parser.parse_args()
    args.docs = args.docs or (24 if args.quick else 300)
    args.rounds = args.rounds or (2 if args.quick else 3)
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
        doc_type = detect_type(doc.filename, None, doc.content)
        chunks.append(chunker.chunk(parse(doc.content, doc_type, fallback_title=title_for_filename(doc.filename))))
    return Corpus(docs, chunks, time.perf_counter() - started)


def timed(stack: BenchStack, run: Callable[[], T]) -> tuple[T, float, dict[str, float]]:
    """`run()`, its wall seconds and the CPU seconds each part of the stack (and this process) spent meanwhile."""
    cpu, started = stack.cpu_by_role(), time.perf_counter()
    result = run()
    return result, time.perf_counter() - started, cpu_delta(cpu, stack.cpu_by_role())


Vectors = list[list[float]]


def raw_embed(stack: BenchStack, embedder: LocalEmbedder, texts: Sequence[str], label: str) -> tuple[Phase, Vectors]:
    """The texts through the model in this process; sentence-transformers length-sorts each call's texts."""
    vectors: Vectors = []
    with progress() as bar:
        task = bar.add_task(label, total=len(texts), detail="")

        def run() -> None:
            for start in range(0, len(texts), RAW_SLICE):
                vectors.extend(embedder.embed(texts[start : start + RAW_SLICE]))
                bar.update(task, completed=len(vectors))

        _, seconds, cpu = timed(stack, run)
    return Phase(label, seconds, len(texts), sum(cpu.values()), roles=cpu), vectors


def cached_vectors(rag: RagServices, prefix: str, texts: Sequence[str]) -> int:
    """How many of `texts` already have a vector in the Redis embedding cache (key layout of CachedEmbedder)."""
    spec = rag.embedder.spec
    keys = [f"{prefix}:emb:{spec.model}:{spec.dimension}:{hashlib.sha256(t.encode()).hexdigest()}" for t in texts]
    return sum(1 for start in range(0, len(keys), 1000) for v in rag.redis.mget(keys[start : start + 1000]) if v)


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
            bar.update(task, completed=len(final), detail=f"{sum(j.chunks_total for j in final.values())} chunks")
    return [final[j.job_id] for j in jobs]


def ingest(stack: BenchStack, rag: RagServices, tenant: str, docs: Sequence[Doc], label: str, timeout: float) -> Phase:
    """Submit the documents; seconds from submit to the last job's final update (the worker's own clock)."""
    subs = [Submission(content=d.content, filename=d.filename) for d in docs]
    before = stack.cpu_by_role()
    started = time.time()
    jobs = wait_jobs(rag, tenant, rag.ingest.submit(tenant, subs), label, timeout)
    cpu = cpu_delta(before, stack.cpu_by_role())
    failed = [j for j in jobs if j.state != JobState.DONE]
    for job in failed[:5]:
        ERR.print(f"[red]job {job.doc_id} {job.state.value}: {job.error}[/red]")
    seconds = max(j.updated_at for j in jobs) - started
    return Phase(label, seconds, sum(j.chunks_total for j in jobs), sum(cpu.values()), len(failed), cpu)


def new_tenant(rag: RagServices, kind: str) -> str:
    tenant = f"{kind}-{uuid.uuid4().hex[:8]}"
    provision(rag, tenant)
    return tenant


def warm_up(stack: BenchStack, rag: RagServices, workers: int, timeout: float) -> None:
    """Load the model in every worker process before timing (2 tiny jobs per worker; prefetch is 1)."""
    docs = [
        Doc(f"warm-{i}.md", f"# Warm-up {i}\n\nLoads the model. {uuid.uuid4()}".encode()) for i in range(2 * workers)
    ]
    ingest(stack, rag, new_tenant(rag, "warm"), docs, "warming up the worker(s)", timeout)


@dataclass
class SingleWorkerRun:
    raw: list[Phase]
    e2e: list[Phase]
    warm: Phase
    vectors: dict[int, list[list[float]]]  # doc index -> its chunks' vectors (from RAW)


def single_worker(
    stack: BenchStack, corpus: Corpus, embedder: LocalEmbedder, args: argparse.Namespace
) -> SingleWorkerRun:
    rounds, timeout = args.rounds, args.timeout
    deployment = stack.deploy(workers=1, concurrency=1, extra_env=env_from(args))
    try:
        rag = deployment.open_rag()
        warm_up(stack, rag, 1, timeout)
        before = cached_vectors(rag, deployment.prefix, corpus.texts())
        if before:
            raise RuntimeError(f"embedding cache not cold: {before} of the corpus's vectors are cached already")
        tenant = new_tenant(rag, "cold")
        run = SingleWorkerRun([], [], Phase("", 0, 0), {})
        for r in range(rounds):
            part = list(range(r, len(corpus.docs), rounds))
            raw, vectors = raw_embed(stack, embedder, corpus.texts(part), f"round {r + 1}/{rounds}: RAW in-process")
            run.raw.append(raw)
            run.vectors.update(_by_doc(corpus, part, vectors))
            label = f"round {r + 1}/{rounds}: E2E, 1 worker x 1, cold cache"
            run.e2e.append(ingest(stack, rag, tenant, [corpus.docs[i] for i in part], label, timeout))
        after = cached_vectors(rag, deployment.prefix, corpus.texts())
        OUT.print(
            f"embedding cache (prefix {deployment.prefix}): {before} of {corpus.total_chunks} chunk vectors "
            f"cached before the cold E2E rounds, {after} after"
        )
        label = "E2E cache-warm re-ingest (new tenant, same prefix)"
        run.warm = ingest(stack, rag, new_tenant(rag, "warm"), corpus.docs, label, timeout)
        return run
    finally:
        deployment.stop()


def _by_doc(corpus: Corpus, part: list[int], vectors: list[list[float]]) -> dict[int, list[list[float]]]:
    out, position = {}, 0
    for i in part:
        out[i] = vectors[position : position + len(corpus.chunks[i])]
        position += len(corpus.chunks[i])
    return out


def two_workers(stack: BenchStack, corpus: Corpus, args: argparse.Namespace) -> Phase:
    timeout = args.timeout
    deployment = stack.deploy(workers=2, concurrency=1, extra_env=env_from(args))
    try:
        rag = deployment.open_rag()
        warm_up(stack, rag, 2, timeout)
        label = "E2E, 2 worker processes x 1, cold cache"
        return ingest(stack, rag, new_tenant(rag, "two"), corpus.docs, label, timeout)
    finally:
        deployment.stop()


def weaviate_write(stack: BenchStack, corpus: Corpus, vectors: dict[int, list[list[float]]]) -> Phase:
    """The store step alone: the same chunks and vectors through ChunkStore.write_document, one doc at a time."""
    deployment = stack.deploy(workers=0)
    try:
        rag = deployment.open_rag()
        tenant = new_tenant(rag, "write")

        def run() -> None:
            for i, (doc, chunks) in enumerate(zip(corpus.docs, corpus.chunks, strict=True)):
                rag.store.write_document(tenant, _info(doc, len(chunks)), _stored(chunks), vectors[i])

        _, seconds, cpu = timed(stack, run)
        label = "Weaviate writes alone (same chunks + vectors)"
        return Phase(label, seconds, corpus.total_chunks, sum(cpu.values()), roles=cpu)
    finally:
        deployment.stop()


def _info(doc: Doc, count: int) -> DocumentInfo:
    digest = hashlib.sha256(doc.content).hexdigest()
    return DocumentInfo(doc.filename, doc.filename, doc.filename, "text", [], {}, digest, count, now_iso())


def _stored(chunks: list[ChunkText]) -> list[StoredChunk]:
    return [
        StoredChunk(c.index, c.text, c.heading_path, hashlib.sha256(c.embed_text.encode()).hexdigest()) for c in chunks
    ]


def report(corpus: Corpus, run: SingleWorkerRun, two: Phase | None, write: Phase) -> None:
    raw, e2e = total("RAW in-process, all rounds", run.raw), total("E2E 1 worker x 1, cold, all rounds", run.e2e)
    rows = []
    for phase in [*run.raw, *run.e2e, raw, e2e, run.warm, *([two] if two else []), write]:
        ratio = f"{phase.rate / raw.rate:.3f}" if phase not in run.raw and phase is not raw else "1.000"
        rows.append((phase.name, phase.chunks, phase.seconds, phase.rate, ratio, phase.cpu_ms_per_chunk, phase.failed))
    OUT.print(
        table(
            f"Ingest: {len(corpus.docs)} documents ({len(corpus.docs) - 12} stdlib + 12 samples), "
            f"{corpus.total_bytes / 1e6:.2f} MB, {corpus.total_chunks} chunks; ratio = rate / RAW rate",
            ["phase", "chunks", "wall s", "chunks/s", "ratio", "CPU ms/chunk", "failed"],
            rows,
        )
    )
    stages = [
        ("parse + chunk (in-process)", corpus.parse_chunk_s),
        ("embed (RAW in-process)", raw.seconds),
        ("Weaviate writes (in-process)", write.seconds),
    ]
    accounted = sum(s for _, s in stages)
    rest = ("rest: queue, Redis, job bookkeeping, noise", e2e.seconds - accounted)
    rows2 = [*stages, ("sum of stages", accounted), (e2e.name, e2e.seconds), rest]
    OUT.print(table("Where the single-worker E2E wall time goes", ["stage", "seconds"], rows2))
    cpu_rows = [
        (p.name, *(1000 * p.roles.get(r, 0.0) / p.chunks for r in ROLES), p.cpu_ms_per_chunk)
        for p in [raw, e2e, *([two] if two else []), run.warm, write]
    ]
    OUT.print(table("CPU ms per chunk by process", ["phase", "bench (this process)", *ROLES[1:], "all"], cpu_rows))
    wall = e2e.rate / raw.rate
    cpu = raw.cpu_ms_per_chunk / e2e.cpu_ms_per_chunk
    met = wall >= TARGET and e2e.failed == 0 and e2e.chunks == corpus.total_chunks
    OUT.print(
        f"CPU view (noise-robust): RAW {raw.cpu_ms_per_chunk:.1f} ms/chunk, E2E {e2e.cpu_ms_per_chunk:.1f} "
        f"ms/chunk over all stack processes -> CPU efficiency {cpu:.3f}"
    )
    detail = f"e2e {e2e.rate:.2f} vs raw {raw.rate:.2f} chunks/s; CPU-time ratio {cpu:.3f}; {e2e.failed} failed"
    OUT.print(verdict("ingest e2e/raw, 1 worker x concurrency 1, cold cache", wall, f">= {TARGET:.2f}", met, detail))


def main() -> None:
    args = parse_args()
    OUT.print(f"[bold]bench.ingest[/bold] · {machine_note()} · worker env: {' '.join(args.env) or 'default'}")
    settings = Settings()
    corpus = prepare_corpus(args.docs, settings)
    ERR.print(f"corpus: {len(corpus.docs)} docs, {corpus.total_chunks} chunks ({corpus.parse_chunk_s:.1f}s)")
    embedder = LocalEmbedder(settings.rag.embed_batch_size)
    embedder.embed(["load the model before timing"])
    with bench_stack(keep=args.keep) as stack:
        run = single_worker(stack, corpus, embedder, args)
        two = two_workers(stack, corpus, args) if args.two_workers else None
        write = weaviate_write(stack, corpus, run.vectors)
    report(corpus, run, two, write)


if __name__ == "__main__":
    main()
