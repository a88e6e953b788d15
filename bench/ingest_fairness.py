"""Ingest fairness: tenant A submits 300 documents, tenant B then submits one short note.

What B waits for its note behind A's bulk ingest, beside the same note's time on an idle system, measured in
the same run and the same deployment (before A submits). Target (issue 14): B's time <= 2 x idle + the
longest single job of A's batch. Fairness must not cost throughput: the drain time of A's batch and B's note
under today's first come, first served (ORCHESTRION_RAG__INGEST_DISPATCH_AHEAD=0: every job straight into
Celery) over the drain time with fair dispatch (the default) must be >= 0.95.

The two phases run in turn, twice by default (fair, FIFO, then FIFO, fair: neither always comes first on a
machine whose load drifts); the verdict takes each figure's median over the rounds. Each phase gets fresh
worker processes under a fresh Redis key prefix; the embedding cache is off
(ORCHESTRION_RAG__EMBEDDING_CACHE_TTL_S=0), so the note costs the same work each time it is ingested. A's
documents are distinct Markdown documents of about 2 KB (two or three chunks) made of paragraphs of the
Python standard library's own documentation (pydoc), or with --pages the pydoc pages themselves (2-30 KB,
about 4 s of CPU each here); B's note is a short Markdown note (one chunk). Jobs are submitted in this
process, as the CLI submits them.

    .venv/bin/python -m bench.ingest_fairness [--quick] [--docs N] [--rounds N] [--workers N --concurrency N]
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid
from dataclasses import dataclass

from bench._corpus import Doc, paragraphs, small_markdown_docs, stdlib_docs
from bench._report import ERR, OUT, machine_note, table
from bench._stack import BenchStack, add_env_option, bench_stack, env_from
from bench.ingest_burst import wait_done, warm_up
from orchestrion.knowledge import provision
from rag.ingest import Submission
from rag.jobs import JobState, JobStatus
from rag.services import RagServices

NOTE = b"""# Standup note

Tomorrow's standup moves to 10:30 because the payments review runs long. Bring the numbers for the
refund backlog and the list of tenants still on the old ingest client.
"""
IDLE_RUNS = 3


@dataclass
class Phase:
    name: str
    idle_s: list[float]  # the note alone, before A submits
    note_s: float  # the note, submitted behind A's batch: submit -> DONE
    note_started_after: int  # A's jobs started before the note's
    drain_s: float  # A's submit -> the last of A's jobs and the note DONE
    longest_job_s: float  # the longest of A's jobs, start -> DONE
    mean_job_s: float
    failed: int
    cpu_s: float

    @property
    def idle_median_s(self) -> float:
        return statistics.median(self.idle_s)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest_fairness", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: A submits 60 documents")
    parser.add_argument("--docs", type=int, help="documents tenant A submits (default 300; --quick 60)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--concurrency", type=int, default=2, help="pool processes per worker (default 2)")
    parser.add_argument("--rounds", type=int, help="rounds of both phases (default 2; --quick 1)")
    parser.add_argument("--pages", action="store_true", help="A's documents: whole pydoc pages (2-30 KB)")
    parser.add_argument("--note-after", type=float, default=3.0, help="seconds after A's submission B submits")
    parser.add_argument("--timeout", type=float, default=3600.0, help="bound on each phase's drain (s)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    add_env_option(parser)
    args = parser.parse_args()
    args.docs = args.docs or (60 if args.quick else 300)
    args.rounds = args.rounds or (1 if args.quick else 2)
    return args


def _time_to_done(rag: RagServices, tenant: str, label: str, timeout: float) -> tuple[JobStatus, float]:
    submitted = time.time()
    [job] = rag.ingest.submit(tenant, [Submission(NOTE, "standup.md")])
    [job] = wait_done(rag, tenant, [job.job_id], label, timeout)
    return job, job.updated_at - submitted


def _tenant(rag: RagServices, role: str) -> str:
    name = f"{role}-{uuid.uuid4().hex[:8]}"
    provision(rag, name)
    return name


def run_phase(stack: BenchStack, docs: list[Doc], fair: bool, args: argparse.Namespace) -> Phase:
    name = "fair dispatch (default)" if fair else "first come, first served (today)"
    env = {**env_from(args), "ORCHESTRION_RAG__EMBEDDING_CACHE_TTL_S": "0"}
    if not fair:
        env["ORCHESTRION_RAG__INGEST_DISPATCH_AHEAD"] = "0"
    deployment = stack.deploy(workers=args.workers, concurrency=args.concurrency, extra_env=env)
    try:
        rag = deployment.open_rag()
        warm_up(rag, args.workers * args.concurrency, args.timeout)
        idle = [_time_to_done(rag, _tenant(rag, "idle"), f"{name}: the note alone", 300)[1] for _ in range(IDLE_RUNS)]
        a, b = _tenant(rag, "a"), _tenant(rag, "b")
        cpu_before = stack.cpu_seconds()
        started = time.time()
        with ERR.status(f"{name}: A submits {len(docs)} documents…"):
            bulk = rag.ingest.submit(a, [Submission(d.content, d.filename) for d in docs])
        time.sleep(max(0.0, started + args.note_after - time.time()))
        note, note_s = _time_to_done(rag, b, f"{name}: B's note behind A's batch", args.timeout)
        jobs = wait_done(rag, a, [j.job_id for j in bulk], f"{name}: A's batch", args.timeout)
        cpu = stack.cpu_seconds() - cpu_before
        done = [j for j in jobs if j.state == JobState.DONE]
        runs = [j.updated_at - j.started_at for j in done]
        return Phase(
            name,
            idle,
            note_s,
            sum(j.started_at < note.started_at for j in jobs),
            max(j.updated_at for j in [*jobs, note]) - started,
            max(runs, default=float("nan")),
            statistics.mean(runs) if runs else float("nan"),
            len(jobs) - len(done) + (note.state != JobState.DONE),
            cpu,
        )
    finally:
        deployment.stop()


def median_phase(phases: list[Phase]) -> Phase:
    """Each figure's median over the rounds (the idle runs pooled)."""

    def med(name: str) -> float:
        return float(statistics.median(getattr(p, name) for p in phases))

    idle = [s for p in phases for s in p.idle_s]
    figures = ("note_s", "note_started_after", "drain_s", "longest_job_s", "mean_job_s", "cpu_s")
    values = {name: med(name) for name in figures}
    return Phase(phases[0].name, idle, failed=sum(p.failed for p in phases), **values)  # type: ignore[arg-type]


def report(fair: Phase, fifo: Phase, docs: int) -> None:
    rows = [
        ("B's note alone on the idle system: median (s)", fair.idle_median_s, fifo.idle_median_s),
        ("B's note alone: each run (s)", _runs(fair.idle_s), _runs(fifo.idle_s)),
        ("B's note behind A's batch: submit -> done (s)", fair.note_s, fifo.note_s),
        (f"A's jobs started before B's note (of {docs})", fair.note_started_after, fifo.note_started_after),
        ("longest single job of A's batch (s)", fair.longest_job_s, fifo.longest_job_s),
        ("mean job of A's batch, start -> done (s)", fair.mean_job_s, fifo.mean_job_s),
        ("target for B: 2 x idle + longest job (s)", 2 * fair.idle_median_s + fair.longest_job_s, "-"),
        ("drain: A submits -> all of A and B done (s)", fair.drain_s, fifo.drain_s),
        ("jobs failed", fair.failed, fifo.failed),
        ("CPU s, every process of the phase", fair.cpu_s, fifo.cpu_s),
    ]
    OUT.print(table(f"Ingest fairness: A submits {docs} documents, then B one note", ["", fair.name, fifo.name], rows))
    target = 2 * fair.idle_median_s + fair.longest_job_s
    throughput = fifo.drain_s / fair.drain_s if fair.drain_s > 0 else float("nan")
    note_ok = fair.note_s <= target
    met = note_ok and throughput >= 0.95 and fair.failed == fifo.failed == 0
    OUT.print(
        f"{'PASS' if met else 'MISS'} ingest fairness: B's note {fair.note_s:.1f}s behind A's batch, target <= "
        f"{target:.1f}s (2 x idle {fair.idle_median_s:.1f}s + A's longest job {fair.longest_job_s:.1f}s): "
        f"{'met' if note_ok else 'missed'}, ratio note / idle {fair.note_s / fair.idle_median_s:.2f} (first come, "
        f"first served: {fifo.note_s:.1f}s, {fifo.note_s / fifo.idle_median_s:.1f}x idle); throughput FIFO drain "
        f"{fifo.drain_s:.1f}s / fair drain {fair.drain_s:.1f}s = {throughput:.3f}, target >= 0.95"
    )


def _runs(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def main() -> None:
    args = parse_args()
    OUT.print(f"[bold]bench.ingest_fairness[/bold] · {machine_note()} · worker env: {' '.join(args.env) or 'default'}")
    with ERR.status("rendering stdlib documentation with pydoc…"):
        pages = stdlib_docs(args.docs if args.pages else 120)
    docs = pages if args.pages else small_markdown_docs(paragraphs(pages), args.docs, 1800, seed=7, label="bulk")
    if len(docs) < args.docs:
        raise SystemExit(f"only {len(docs)} stdlib documents of 2-30 KB here: ask for --docs {len(docs)}")
    ERR.print(f"A: {len(docs)} documents, {sum(len(d.content) for d in docs) / 1e6:.1f} MB; B: one note")
    phases: dict[bool, list[Phase]] = {True: [], False: []}
    with bench_stack(keep=args.keep) as stack:
        for round_ in range(args.rounds):
            for fair in (True, False) if round_ % 2 == 0 else (False, True):
                phases[fair].append(run_phase(stack, docs, fair, args))
    for round_, (fair_phase, fifo_phase) in enumerate(zip(phases[True], phases[False], strict=True), 1):
        OUT.print(f"[bold]round {round_}[/bold]")
        report(fair_phase, fifo_phase, len(docs))
    if args.rounds > 1:
        OUT.print(f"[bold]median of {args.rounds} rounds[/bold]")
        report(median_phase(phases[True]), median_phase(phases[False]), len(docs))


if __name__ == "__main__":
    main()
