"""Retrieval quality: recall@5 and MRR@5 of vector, keyword and hybrid search over samples/corpus.

The 12 sample documents are ingested into a fresh tenant through the real pipeline (IngestService.submit,
a real Celery worker, real Weaviate; `source` is the filename given). Each question of
bench/data/questions.jsonl is asked in every mode with k=5 (hybrid: alpha 0.6, relative-score fusion, the
defaults). A question is a hit when any of the top-5 chunks' `source` basename is one of its `sources`;
MRR@5 uses the rank of the first such chunk (0 when none). No target: the table is the result.

    .venv/bin/python -m bench.retrieval_quality [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from bench._corpus import SAMPLES
from bench._report import ERR, OUT, machine_note, progress, table
from bench._stack import bench_stack
from orchestrion.knowledge import provision
from rag.ingest import Submission
from rag.jobs import FINAL_STATES, JobState
from rag.search import SearchRequest, search
from rag.services import RagServices

QUESTIONS = Path(__file__).resolve().parent / "data" / "questions.jsonl"
Mode = Literal["vector", "keyword", "hybrid"]
MODES: tuple[Mode, ...] = ("vector", "keyword", "hybrid")
K = 5


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    sources: frozenset[str]
    kind: str


@dataclass(frozen=True)
class Answer:
    question: Question
    mode: Mode
    rank: int  # 1-based rank of the first chunk from a right source; 0 when none in the top K


def load_questions(limit: int | None) -> list[Question]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    questions = [Question(r["id"], r["question"], frozenset(r["sources"]), r["kind"]) for r in rows]
    return questions[:limit] if limit else questions


def ingest_samples(rag: RagServices, tenant: str) -> int:
    files = sorted(p for p in SAMPLES.iterdir() if p.is_file())
    submissions = [Submission(content=f.read_bytes(), filename=f.name) for f in files]
    return ingest_and_wait(rag, tenant, submissions, f"ingesting {len(files)} sample documents")


def ingest_and_wait(
    rag: RagServices, tenant: str, submissions: list[Submission], label: str, timeout: float = 600.0
) -> int:
    """Submit the documents, wait (with a progress bar) until every job is done; the number of chunks."""
    jobs = rag.ingest.submit(tenant, submissions)
    deadline = time.monotonic() + timeout
    with progress() as bar:
        task = bar.add_task(label, total=len(jobs), detail="")
        while time.monotonic() < deadline:
            jobs = [rag.ingest.status(tenant, j.job_id) for j in jobs]
            bar.update(task, completed=sum(j.state in FINAL_STATES for j in jobs))
            if all(j.state in FINAL_STATES for j in jobs):
                break
            time.sleep(0.5)
    failed = [j for j in jobs if j.state != JobState.DONE]
    if failed:
        raise RuntimeError(f"{len(failed)} ingest job(s) did not finish: {[(j.doc_id, j.error) for j in failed][:5]}")
    return sum(j.chunks_total for j in jobs)


def ask(rag: RagServices, tenant: str, question: Question, mode: Mode) -> Answer:
    hits = search(rag.store, rag.embedder, tenant, SearchRequest(query=question.question, mode=mode, k=K))
    for rank, hit in enumerate(hits, 1):
        if PurePosixPath(hit.source.replace("\\", "/")).name in question.sources:
            return Answer(question, mode, rank)
    return Answer(question, mode, 0)


def scores(answers: list[Answer]) -> tuple[float, float, int]:
    """recall@K, MRR@K and the number of questions."""
    if not answers:
        return float("nan"), float("nan"), 0
    recall = sum(a.rank > 0 for a in answers) / len(answers)
    mrr = sum(1 / a.rank for a in answers if a.rank) / len(answers)
    return recall, mrr, len(answers)


def report(answers: list[Answer], chunks: int) -> None:
    groups: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        groups[(a.mode, "all")].append(a)
        groups[(a.mode, a.question.kind)].append(a)
    kinds = ["all", *sorted({a.question.kind for a in answers})]
    rows = []
    for kind in kinds:
        row: list[object] = [kind, scores(groups[(MODES[0], kind)])[2]]
        for mode in MODES:
            recall, mrr, _ = scores(groups[(mode, kind)])
            row += [recall, mrr]
        rows.append(row)
    headers = ["questions", "n", *[f"{m} {s}" for m in MODES for s in (f"recall@{K}", f"MRR@{K}")]]
    OUT.print(table(f"Retrieval quality over samples/corpus (12 documents, {chunks} chunks), k={K}", headers, rows))
    for mode in MODES:
        misses = sorted(a.question.id for a in answers if a.mode == mode and a.rank == 0)
        OUT.print(f"missed by {mode}: {', '.join(misses) or 'none'}")
    line = ", ".join(f"{m} {scores(groups[(m, 'all')])[0]:.3f}" for m in MODES)
    OUT.print(f"DONE retrieval quality: recall@{K} {line} (no target)")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the first 15 questions")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    args = parser.parse_args()
    OUT.print(f"[bold]bench.retrieval_quality[/bold] · {machine_note()}")
    questions = load_questions(15 if args.quick else None)
    with bench_stack(keep=args.keep) as stack:
        deployment = stack.deploy(workers=1, concurrency=1)
        rag = deployment.open_rag()
        tenant = f"quality-{uuid.uuid4().hex[:8]}"
        provision(rag, tenant)
        chunks = ingest_samples(rag, tenant)
        with ERR.status(f"asking {len(questions)} questions in {len(MODES)} modes…"):
            answers = [ask(rag, tenant, q, mode) for q in questions for mode in MODES]
    report(answers, chunks)


if __name__ == "__main__":
    main()
