"""Ingest burst: 500 clients POST /v1/documents at the same instant against a small ingest queue limit.

A real `orchestrion serve` runs with ORCHESTRION_RAG__INGEST_QUEUE_LIMIT=100 (default here), so the API
must push back with 429 + Retry-After. Every client honours Retry-After (plus up to 1 s of jitter) and
retries, bounded in attempts and time. Afterwards every accepted job must be DONE (checked through
GET /v1/jobs/{id}) and Weaviate must hold exactly the 500 distinct documents: nothing lost, nothing doubled.
The limit is exact, so the jobs accepted and not yet started (and the broker's queue) must never have
exceeded it in any sample.

Baseline, same run: the same 500 documents submitted one after another by a single client (who also
honours 429s). Each phase gets fresh worker + API processes under a fresh Redis key prefix (cold
embedding cache, empty queue) and its own tenant. Printed ratio: burst drain time / sequential drain time.

    .venv/bin/python -m bench.ingest_burst [--quick] [--docs N] [--queue-limit N] [--workers N --concurrency N]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from bench._corpus import Doc, paragraphs, small_markdown_docs, stdlib_docs
from bench._report import ERR, OUT, machine_note, progress, table
from bench._stack import BenchStack, Deployment, add_env_option, bench_stack, env_from
from orchestrion.knowledge import provision
from rag.ingest import Submission
from rag.jobs import FINAL_STATES, JobState, JobStatus
from rag.services import RagServices


@dataclass
class Outcome:
    """One client's submission of one document."""

    doc: Doc
    job_id: str = ""
    attempts: int = 0
    told_to_retry: int = 0
    retry_after: list[float] = field(default_factory=list)
    transient: list[str] = field(default_factory=list)  # transport errors and 5xx, retried with the same key
    error: str = ""
    first_sent: float = 0.0
    idempotency_key: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex}")


@dataclass
class PhaseResult:
    name: str
    outcomes: list[Outcome]
    jobs: list[JobStatus]
    http_done: int
    weaviate_docs: int
    weaviate_ids: set[str]
    max_waiting: int  # most jobs accepted and not yet started seen (the admitted set, which the limit bounds)
    max_depth: int  # most tasks seen waiting in the broker's ingest list
    dry_s: float  # time no job waited to start while clients still waited to be accepted
    first_sent: float
    last_accepted: float
    drain_s: float
    cpu: dict[str, float]  # CPU seconds by process role, first POST -> last job DONE
    mean_job_s: float  # the workers' own moving average of a job's run time
    drain_interval_s: float  # the moving average of the gap between job starts while jobs waited (Retry-After's pace)

    @property
    def posts(self) -> int:
        return sum(o.attempts for o in self.outcomes)

    @property
    def refusals(self) -> int:
        """429s answered."""
        return sum(o.told_to_retry for o in self.outcomes)

    @property
    def accepted(self) -> int:
        return sum(1 for o in self.outcomes if o.job_id)

    @property
    def errors(self) -> int:
        return sum(1 for o in self.outcomes if o.error)

    @property
    def done(self) -> int:
        return sum(1 for j in self.jobs if j.state == JobState.DONE)

    @property
    def weaviate_doc_ids(self) -> int:
        return len(self.weaviate_ids)

    @property
    def lost(self) -> int:
        """Accepted documents whose job is not DONE or whose chunks are not in Weaviate."""
        return sum(1 for j in self.jobs if j.state != JobState.DONE or j.doc_id not in self.weaviate_ids)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_burst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 60 documents, queue limit 15")
    parser.add_argument("--docs", type=int, help="documents and concurrent clients (default 500; --quick 60)")
    parser.add_argument("--queue-limit", type=int, help="the API's ingest queue limit (default 100; --quick 15)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    parser.add_argument("--max-attempts", type=int, default=1000, help="attempts per document before giving up")
    parser.add_argument("--timeout", type=float, default=1800.0, help="bound on each phase's submit and drain (s)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    add_env_option(parser)
    args = parser.parse_args()
    args.docs = args.docs or (60 if args.quick else 500)
    args.queue_limit = args.queue_limit or (15 if args.quick else 100)
    return args


def make_docs(count: int, seed: int) -> list[Doc]:
    """Small distinct Markdown documents (~1 KB, one or two chunks) of stdlib documentation paragraphs."""
    with ERR.status("rendering stdlib documentation with pydoc…"):
        pool = paragraphs(stdlib_docs(120))
    return small_markdown_docs(pool, count, target_chars=900, seed=seed, label="burst")


# --- clients --------------------------------------------------------------------------------------------


async def submit(
    client: httpx.AsyncClient,
    url: str,
    token: str,
    out: Outcome,
    rng: random.Random,
    max_attempts: int,
    deadline: float,
) -> None:
    """POST one document until accepted. 429: wait Retry-After (+ up to 1 s jitter). A transport error or a 5xx
    may or may not have been processed, so it is retried after 1 s with the same Idempotency-Key (counted).
    Any other answer is an error and ends this client."""
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": out.idempotency_key}
    while out.attempts < max_attempts and time.monotonic() < deadline:
        out.attempts += 1
        if not out.first_sent:
            out.first_sent = time.time()
        files = [("files", (out.doc.filename, out.doc.content, "text/markdown"))]
        try:
            response = await client.post(f"{url}/v1/documents", files=files, headers=headers)
        except httpx.TransportError as exc:
            out.transient.append(f"{type(exc).__name__}: {exc}"[:160])
            await asyncio.sleep(1.0)
            continue
        if response.status_code == 202:
            out.job_id = response.json()["jobs"][0]["job_id"]
            return
        if response.status_code >= 500:
            out.transient.append(f"HTTP {response.status_code}: {response.text[:120]}")
            await asyncio.sleep(1.0)
            continue
        if response.status_code != 429:
            out.error = f"HTTP {response.status_code}: {response.text[:200]}"
            return
        out.told_to_retry += 1
        wait = float(response.headers.get("Retry-After", "1"))
        out.retry_after.append(wait)
        await asyncio.sleep(wait + rng.uniform(0.0, 1.0))
    out.error = f"gave up after {out.attempts} attempts"


async def submit_all(url: str, token: str, outcomes: list[Outcome], burst: bool, args: argparse.Namespace) -> None:
    """Burst: one task per document, all released at once. Sequential: one client, one document at a time."""
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.timeout
    limits = httpx.Limits(max_connections=len(outcomes) + 10, max_keepalive_connections=len(outcomes) + 10)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(120.0)) as client:
        if burst:
            await asyncio.gather(*(submit(client, url, token, o, rng, args.max_attempts, deadline) for o in outcomes))
        else:
            for out in outcomes:
                await submit(client, url, token, out, rng, args.max_attempts, deadline)


async def http_states(url: str, token: str, job_ids: Sequence[str]) -> list[str]:
    """Every job's state as GET /v1/jobs/{id} reports it (32 requests in flight)."""
    gate = asyncio.Semaphore(32)
    headers = {"Authorization": f"Bearer {token}"}

    async with httpx.AsyncClient(timeout=60.0) as client:

        async def one(job_id: str) -> str:
            async with gate:
                response = await client.get(f"{url}/v1/jobs/{job_id}", headers=headers)
                return (
                    str(response.json().get("state")) if response.status_code == 200 else f"HTTP {response.status_code}"
                )

        return list(await asyncio.gather(*(one(j) for j in job_ids)))


# --- the phase --------------------------------------------------------------------------------------------


@contextmanager
def depth_sampler(
    deployment: Deployment, rag: RagServices, every_s: float = 0.05
) -> Iterator[list[tuple[float, int, int]]]:
    """Samples (monotonic time, jobs accepted and not yet started, broker ingest queue depth) in a thread while
    the block runs; yields the growing list of samples."""
    samples: list[tuple[float, int, int]] = []
    stop = threading.Event()
    if deployment.ingest_depth() != deployment.ingest_depth_fast():  # the same key as the metric reads?
        raise RuntimeError("the fast queue-depth probe disagrees with workers.app.queue_depth")

    def loop() -> None:
        while not stop.is_set():
            samples.append((time.monotonic(), rag.jobs.waiting(), deployment.ingest_depth_fast()))
            stop.wait(every_s)

    thread = threading.Thread(target=loop, name="depth-sampler", daemon=True)
    thread.start()
    try:
        yield samples
    finally:
        stop.set()
        thread.join(5)


def dry_s(samples: Sequence[tuple[float, int, int]]) -> float:
    """How long no job waited to start, from the first job admitted to the last client accepted: time the
    workers may have idled because refused clients came back too late."""
    first = next((i for i, (_, waiting, _) in enumerate(samples) if waiting), len(samples))
    return sum(after[0] - sample[0] for sample, after in itertools.pairwise(samples[first:]) if not sample[1])


def wait_done(rag: RagServices, tenant: str, job_ids: list[str], label: str, timeout: float) -> list[JobStatus]:
    final: dict[str, JobStatus] = {}
    pending = list(job_ids)
    deadline = time.monotonic() + timeout
    with progress() as bar:
        task = bar.add_task(label, total=len(job_ids), detail="")
        while pending and time.monotonic() < deadline:
            current = [rag.jobs.get(tenant, j) for j in pending]
            final.update({j.job_id: j for j in current if j.state in FINAL_STATES})
            pending = [j.job_id for j in current if j.state not in FINAL_STATES]
            bar.update(task, completed=len(final))
            time.sleep(0.25)
    return [final.get(j) or rag.jobs.get(tenant, j) for j in job_ids]


def weaviate_counts(rag: RagServices, tenant: str) -> tuple[int, set[str]]:
    """Documents in the tenant's Docs collection, and distinct doc_ids over its chunks."""
    docs = rag.weaviate.collections.use(rag.store.docs_name).with_tenant(tenant)
    chunks = rag.weaviate.collections.use(rag.store.chunks_name).with_tenant(tenant)
    total = docs.aggregate.over_all(total_count=True).total_count or 0
    return total, {str(o.properties["doc_id"]) for o in chunks.iterator(return_properties=["doc_id"])}


def warm_up(rag: RagServices, workers: int, timeout: float) -> None:
    """Load the model in every pool process before timing (2 tiny jobs per pool process; prefetch is 1)."""
    tenant = f"warm-{uuid.uuid4().hex[:8]}"
    provision(rag, tenant)
    subs = [
        Submission(content=f"# Warm-up {i}\n\n{uuid.uuid4()}".encode(), filename=f"w{i}.md") for i in range(2 * workers)
    ]
    jobs = rag.ingest.submit(tenant, subs)
    wait_done(rag, tenant, [j.job_id for j in jobs], "warming up the workers", timeout)


def run_phase(stack: BenchStack, docs: list[Doc], burst: bool, args: argparse.Namespace) -> PhaseResult:
    name = f"burst: {len(docs)} concurrent clients" if burst else "sequential: 1 client"
    env = {**env_from(args), "ORCHESTRION_RAG__INGEST_QUEUE_LIMIT": str(args.queue_limit)}
    deployment = stack.deploy(workers=args.workers, concurrency=args.concurrency, api=True, extra_env=env)
    try:
        rag = deployment.open_rag()
        warm_up(rag, args.workers * args.concurrency, args.timeout)
        tenant = f"burst-{uuid.uuid4().hex[:8]}"
        provision(rag, tenant)
        token = rag.registry.issue_token(tenant, "bench")
        outcomes = [Outcome(d) for d in docs]
        cpu_before = stack.cpu_by_role()
        with depth_sampler(deployment, rag) as samples, ERR.status(f"{name}: submitting…"):
            asyncio.run(submit_all(deployment.api_url, token, outcomes, burst, args))
            last_accepted = time.time()
        job_ids = [o.job_id for o in outcomes if o.job_id]
        jobs = wait_done(rag, tenant, job_ids, f"{name}: draining", args.timeout)
        cpu_after = stack.cpu_by_role()
        cpu = {role: cpu_after[role] - cpu_before[role] for role in cpu_after}
        mean_job = rag.jobs.mean_job_seconds() or float("nan")
        drain_interval = rag.jobs.drain_interval() or float("nan")
        states = asyncio.run(http_states(deployment.api_url, token, job_ids))
        first = min(o.first_sent for o in outcomes)
        drain = max((j.updated_at for j in jobs), default=first) - first
        counts = weaviate_counts(rag, tenant)
        return PhaseResult(
            name,
            outcomes,
            jobs,
            states.count("done"),
            *counts,
            max((waiting for _, waiting, _ in samples), default=0),
            max((depth for _, _, depth in samples), default=0),
            dry_s(samples),
            first,
            last_accepted,
            drain,
            cpu,
            mean_job,
            drain_interval,
        )
    finally:
        deployment.stop()


# --- report -----------------------------------------------------------------------------------------------


def rows(result: PhaseResult, total_docs: int, limit: int) -> list[tuple[str, object]]:
    first_try = sum(1 for o in result.outcomes if o.job_id and o.attempts == 1)
    retries = [w for o in result.outcomes for w in o.retry_after]
    ra = f"{min(retries):.0f} / {statistics.median(retries):.0f} / {max(retries):.0f}" if retries else "-"
    told = [o.told_to_retry for o in result.outcomes if o.told_to_retry]
    per_client = f"{statistics.median(told):.0f} / {max(told)}" if told else "-"
    failed = sum(1 for j in result.jobs if j.state == JobState.FAILED)
    return [
        ("documents (clients)", total_docs),
        ("accepted on first try", first_try),
        ("429 responses (told to retry)", result.refusals),
        ("429 responses per document", result.refusals / max(1, total_docs)),
        ("clients told to retry at least once", len(told)),
        ("429s per client told to retry: median / max", per_client),
        ("Retry-After min / median / max (s)", ra),
        (
            "transport errors / 5xx, retried with the same Idempotency-Key",
            sum(len(o.transient) for o in result.outcomes),
        ),
        ("errors (final)", result.errors),
        ("accepted total", result.accepted),
        ("jobs DONE (job store)", result.done),
        ("jobs DONE (GET /v1/jobs/{id})", result.http_done),
        ("jobs FAILED", failed),
        ("documents in Weaviate (Docs collection)", result.weaviate_docs),
        ("distinct doc_ids over Weaviate chunks", result.weaviate_doc_ids),
        ("lost (accepted, not DONE or not in Weaviate)", result.lost),
        (f"max jobs accepted, not yet started (limit {limit}; sampled every 50 ms)", result.max_waiting),
        ("max tasks in the broker's ingest queue", result.max_depth),
        ("queue bound held", "yes" if bound_held(result, limit) else "NO"),
        ("no job waiting to start while clients waited to be accepted (s)", result.dry_s),
        ("submit window: first POST -> last accepted (s)", result.last_accepted - result.first_sent),
        ("drain: first POST -> last job DONE (s)", result.drain_s),
        ("worker mean job run time (s, moving average)", result.mean_job_s),
        ("pace measured for Retry-After: job starts/s while jobs waited", 1 / result.drain_interval_s),
        ("POST /v1/documents requests answered", result.posts),
        ("CPU s: everything (API, workers, Weaviate, Redis, clients)", sum(result.cpu.values())),
        ("CPU s: API server", result.cpu["api"]),
        ("CPU ms per POST: API server", 1000 * result.cpu["api"] / max(1, result.posts)),
        (
            "CPU s: workers / weaviate / redis / clients",
            " / ".join(f"{result.cpu[r]:.1f}" for r in ("workers", "weaviate", "redis", "bench")),
        ),
    ]


def bound_held(result: PhaseResult, limit: int) -> bool:
    return result.max_waiting <= limit and result.max_depth <= limit


def healthy(result: PhaseResult, total_docs: int, limit: int) -> bool:
    return (
        bound_held(result, limit)
        and result.errors == 0
        and result.accepted == total_docs
        and result.done == total_docs
        and result.http_done == total_docs
        and result.weaviate_docs == total_docs
        and result.weaviate_doc_ids == total_docs
        and result.lost == 0
    )


def problems(result: PhaseResult) -> None:
    """The distinct error and transient-error messages of a phase, with counts."""
    seen = Counter([o.error for o in result.outcomes if o.error] + [t for o in result.outcomes for t in o.transient])
    for message, count in seen.most_common(8):
        OUT.print(f"  {result.name}: {count} x {message}")


def report(burst: PhaseResult, seq: PhaseResult, total_docs: int, limit: int) -> None:
    b, s = rows(burst, total_docs, limit), rows(seq, total_docs, limit)
    merged = [(label, bv, sv) for (label, bv), (_, sv) in zip(b, s, strict=True)]
    OUT.print(table(f"Ingest burst vs sequential, queue limit {limit}", ["", burst.name, seq.name], merged))
    problems(burst)
    problems(seq)
    ratio = burst.drain_s / seq.drain_s if seq.drain_s > 0 else float("nan")
    cpu_ratio = sum(burst.cpu.values()) / max(1e-9, sum(seq.cpu.values()))
    ok_b, ok_s = healthy(burst, total_docs, limit), healthy(seq, total_docs, limit)
    word = "PASS" if ok_b and ok_s else "MISS"
    per_doc = [r.refusals / max(1, total_docs) for r in (burst, seq)]
    OUT.print(
        f"{word} ingest burst: ratio {ratio:.3f} (burst drain {burst.drain_s:.1f}s / sequential drain "
        f"{seq.drain_s:.1f}s; CPU burst/sequential {cpu_ratio:.2f}; 429s per document {per_doc[0]:.2f} burst, "
        f"{per_doc[1]:.2f} sequential); target: 0 errors, {total_docs}/{total_docs} "
        f"accepted, DONE and in Weaviate, 0 lost, at most {limit} jobs waiting "
        f"(burst: {burst.errors} errors, {burst.accepted} accepted, {burst.done} done, {burst.weaviate_doc_ids} in "
        f"Weaviate, at most {burst.max_waiting} waiting; sequential: {'ok' if ok_s else 'NOT ok'})"
    )


def main() -> None:
    args = parse_args()
    OUT.print(f"[bold]bench.ingest_burst[/bold] · {machine_note()} · worker/API env: {' '.join(args.env) or 'default'}")
    docs = make_docs(args.docs, args.seed)
    ERR.print(f"{len(docs)} documents, {sum(len(d.content) for d in docs) / 1e3:.0f} KB")
    with bench_stack(keep=args.keep) as stack:
        seq = run_phase(stack, docs, False, args)
        burst = run_phase(stack, docs, True, args)
    report(burst, seq, len(docs), args.queue_limit)


if __name__ == "__main__":
    main()
