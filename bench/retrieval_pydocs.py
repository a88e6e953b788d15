"""Retrieval quality on a corpus nobody on the team wrote: the 317 pages of the Python 3.11 library reference.

The pages come from the Debian package python3.11-doc (`apt-get install -y python3.11-doc`), submitted
through IngestService.submit (doc id `library/` + file name) to a real Celery worker and Weaviate. The questions are
bench/data/pydocs_questions.jsonl (bench/data/README.md: how they were written), each labelled with the
page(s) that answer it, split by a hash of its id into a tuning half and a held-out half.

Scores are page-level: the chunks of a search (k=30) are read as the distinct pages they come from, in order;
R@1 and R@5 say whether a right page is first / in the first five, MRR uses the first right page's rank
(first ten pages). In the same run: the naive pipeline (bench/_naive.py) over the same pages, and bm25s over
the very chunks Orchestrion stored (title, headings and text, as its keyword search reads them).

Targets (held-out detail questions): hybrid R@1 >= 0.75 and R@5 >= 0.97; keyword no worse than bm25s over
the same chunks; hybrid better than naive hybrid.

Vectors are kept between runs in ~/.cache/orchestrion/bench (bench/_vector_cache.py): the ingest's Redis
cache is filled from it first, so the workers embed only what is new (--cold: embed everything).

    .venv/bin/python -m bench.retrieval_pydocs [--cold] [--corpus DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._naive import Bm25, NaivePipeline, windows
from bench._report import ERR, OUT, machine_note, percentile, table
from bench._stack import bench_stack
from bench._vector_cache import DiskCachedEmbedder
from bench.retrieval_quality import ingest_and_wait
from orchestrion.knowledge import provision
from rag.documents import DocType
from rag.embedding import CachedEmbedder, LocalEmbedder
from rag.ingest import Submission
from rag.parsing import parse
from rag.search import SearchRequest, search
from rag.search_text import LEGACY_KEYWORD_FIELDS, search_text
from rag.services import RagServices

CORPUS = Path("/usr/share/doc/python3.11/html/library")
QUESTIONS = Path(__file__).resolve().parent / "data" / "pydocs_questions.jsonl"
SEARCH_K = 30
MRR_DEPTH = 10
DOC_PREFIX = "library/"  # a doc id starts with a letter or digit; page names such as __future__.html do not
MODES = ("vector", "keyword", "hybrid")
LEVER_FUSIONS = [(a, "relative_score") for a in (0.3, 0.5, 0.6, 0.7, 0.8)] + [(a, "ranked") for a in (0.5, 0.7)]


@dataclass(frozen=True)
class Question:
    id: str
    question: str
    pages: frozenset[str]
    kind: str

    @property
    def held_out(self) -> bool:
        """Fixed by the id, never by results: half the questions are kept out of every tuning loop."""
        return int(hashlib.sha256(self.id.encode()).hexdigest()[:8], 16) % 2 == 1


@dataclass
class Row:
    name: str
    ranks: dict[str, int]  # question id -> rank of the first right page (0: not in the first MRR_DEPTH)
    p50_ms: float = float("nan")


def load_questions() -> list[Question]:
    rows = [json.loads(line) for line in QUESTIONS.read_text().splitlines() if line.strip()]
    return [Question(r["id"], r["question"], frozenset(r["pages"]), r["kind"]) for r in rows]


def page_rank(doc_ids: Sequence[str], right: frozenset[str]) -> int:
    pages: list[str] = []
    for doc_id in doc_ids:
        if doc_id not in pages:
            pages.append(doc_id)
    return next((i for i, page in enumerate(pages[:MRR_DEPTH], 1) if page in right), 0)


def scores(row: Row, questions: Sequence[Question]) -> tuple[float, float, float]:
    ranks = [row.ranks[q.id] for q in questions]
    n = len(ranks)
    return sum(r == 1 for r in ranks) / n, sum(0 < r <= 5 for r in ranks) / n, sum(1 / r for r in ranks if r) / n


def fill_embedding_cache(rag: RagServices, disk: DiskCachedEmbedder, pages: dict[str, bytes]) -> None:
    """Put the vectors of the chunks the workers will make into the ingest's Redis cache (from disk where
    known), chunking each page as a worker does."""
    texts = []
    for name, content in pages.items():
        parsed = parse(content, DocType.HTML, fallback_title=Path(name).stem)
        texts += [c.embed_text for c in rag.ingest.chunker.chunk(parsed)]
    settings = rag.settings
    redis_cache = CachedEmbedder(disk, rag.redis, settings.redis.key_prefix, settings.rag.embedding_cache_ttl_s)
    with ERR.status(f"vectors of {len(texts)} chunks into the ingest cache…"):
        for start in range(0, len(texts), 512):
            redis_cache.embed(texts[start : start + 512])


def orchestrion_row(name: str, rag: RagServices, tenant: str, questions: Sequence[Question], **request: object) -> Row:
    ranks, latencies = {}, []
    for q in questions:
        started = time.perf_counter()
        hits = search(rag.store, rag.embedder, tenant, SearchRequest(query=q.question, k=SEARCH_K, **request))  # type: ignore[arg-type]
        latencies.append((time.perf_counter() - started) * 1000)
        ranks[q.id] = page_rank([h.doc_id.removeprefix(DOC_PREFIX) for h in hits], q.pages)
    return Row(name, ranks, percentile(latencies, 50))


def naive_search(naive: NaivePipeline, mode: str) -> Callable[[str], list[str]]:
    return lambda query: naive.search(query, mode)


def ranked_row(name: str, questions: Sequence[Question], ranked: Callable[[str], list[str]]) -> Row:
    return Row(name, {q.id: page_rank(ranked(q.question), q.pages) for q in questions})


def stored_chunks_bm25(rag: RagServices, tenant: str, doc_ids: Sequence[str]) -> Callable[[str], list[str]]:
    """bm25s over the chunks Orchestrion stored, each as its keyword search reads it."""
    owners, texts = [], []
    for doc_id in doc_ids:
        info = rag.store.document(tenant, DOC_PREFIX + doc_id)
        for chunk in rag.store.document_chunks(tenant, DOC_PREFIX + doc_id):
            owners.append(doc_id)
            texts.append(search_text(info.title, chunk.heading_path, chunk.text))
    index = Bm25(texts)
    return lambda query: [owners[i] for i in index.search(query)]


def run(corpus: Path, cold: bool) -> tuple[list[Row], int, int]:
    pages = {p.name: p.read_bytes() for p in sorted(corpus.glob("*.html"))}
    questions = load_questions()
    missing = sorted({p for q in questions for p in q.pages} - set(pages))
    if missing:
        raise SystemExit(f"{corpus} lacks pages the questions name: {missing[:5]}")
    disk = DiskCachedEmbedder(LocalEmbedder())
    with bench_stack() as stack:
        deployment = stack.deploy(workers=1, concurrency=1)
        rag = deployment.open_rag()
        tenant = f"pydocs-{uuid.uuid4().hex[:8]}"
        provision(rag, tenant)
        if not cold:
            fill_embedding_cache(rag, disk, pages)
        submissions = [Submission(content=c, filename=name, doc_id=DOC_PREFIX + name) for name, c in pages.items()]
        chunks = ingest_and_wait(rag, tenant, submissions, f"ingesting {len(pages)} pages", timeout=7200.0)
        with ERR.status("naive pipeline: windows, vectors, bm25s…"):
            passages = windows(pages)
            naive = NaivePipeline(passages, disk if not cold else LocalEmbedder())
        rows = [ranked_row(f"naive {m}", questions, naive_search(naive, m)) for m in MODES]
        bm25 = stored_chunks_bm25(rag, tenant, list(pages))
        rows.append(ranked_row("bm25s over Orchestrion's chunks", questions, bm25))
        with ERR.status(f"asking {len(questions)} questions…"):
            for _ in range(3):  # warm the model and the query path before timing
                search(rag.store, rag.embedder, tenant, SearchRequest(query="warm up"))
            rows += [orchestrion_row(f"orchestrion {m}", rag, tenant, questions, mode=m) for m in MODES]
            rows += lever_rows(rag, tenant, questions)
    return rows, chunks, len(passages)


def lever_rows(rag: RagServices, tenant: str, questions: Sequence[Question]) -> list[Row]:
    """Search-time levers, measured beside the defaults: the keyword fields before search_text, and fusion."""
    rows = []
    current = rag.store.keyword_fields
    rag.store.keyword_fields = LEGACY_KEYWORD_FIELDS
    try:
        rows.append(
            orchestrion_row("keyword, fields text,title,headings (before)", rag, tenant, questions, mode="keyword")
        )
        rows.append(orchestrion_row("hybrid 0.5 relative, fields text,title,headings (before)", rag, tenant, questions,
                                    mode="hybrid", alpha=0.5, fusion="relative_score"))  # fmt: skip
    finally:
        rag.store.keyword_fields = current
    for alpha, fusion in LEVER_FUSIONS:
        rows.append(orchestrion_row(f"hybrid {alpha} {fusion}", rag, tenant, questions, mode="hybrid", alpha=alpha,
                                    fusion=fusion))  # fmt: skip
    return rows


def report(rows: list[Row], questions: list[Question], chunks: int, passages: int) -> None:
    parts = {"tuning": [q for q in questions if not q.held_out], "held-out": [q for q in questions if q.held_out]}
    for part, qs in parts.items():
        groups = {"detail": [q for q in qs if q.kind == "detail"], "all": qs}
        headers = [
            "system",
            *[f"{g} ({len(v)}) {m}" for g, v in groups.items() for m in ("R@1", "R@5", "MRR")],
            "p50 ms",
        ]
        body = [[r.name, *[x for v in groups.values() for x in scores(r, v)], r.p50_ms] for r in rows]
        title = f"Python library pages, {part} questions ({chunks} Orchestrion chunks, {passages} naive windows)"
        OUT.print(table(title, headers, body))
    held = [q for q in parts["held-out"] if q.kind == "detail"]
    by = {r.name: scores(r, held) for r in rows}
    hybrid, keyword = by["orchestrion hybrid"], by["orchestrion keyword"]
    bm25, naive = by["bm25s over Orchestrion's chunks"], by["naive hybrid"]
    checks = [
        (f"hybrid R@1 {hybrid[0]:.3f} >= 0.75", hybrid[0] >= 0.75),
        (f"hybrid R@5 {hybrid[1]:.3f} >= 0.97", hybrid[1] >= 0.97),
        (f"keyword R@1/R@5 {keyword[0]:.3f}/{keyword[1]:.3f} >= bm25s {bm25[0]:.3f}/{bm25[1]:.3f}",
         keyword[0] >= bm25[0] and keyword[1] >= bm25[1]),
        (f"hybrid R@1/MRR {hybrid[0]:.3f}/{hybrid[2]:.3f} > naive hybrid {naive[0]:.3f}/{naive[2]:.3f}",
         hybrid[0] > naive[0] and hybrid[2] > naive[2]),
    ]  # fmt: skip
    for text, met in checks:
        OUT.print(f"{'PASS' if met else 'MISS'} {text} (held-out detail questions)")
    word = "PASS" if all(met for _, met in checks) else "MISS"
    OUT.print(f"{word} retrieval_pydocs: held-out detail hybrid R@1 {hybrid[0]:.3f} R@5 {hybrid[1]:.3f} "
              f"(naive hybrid {naive[0]:.3f} / {naive[1]:.3f})")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval_pydocs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="folder of the library reference's HTML pages")
    parser.add_argument("--cold", action="store_true", help="embed everything (no vectors from earlier runs)")
    args = parser.parse_args()
    if not any(args.corpus.glob("*.html")):
        raise SystemExit(f"no HTML pages in {args.corpus}: install them with `apt-get install -y python3.11-doc`")
    OUT.print(f"[bold]bench.retrieval_pydocs[/bold] · {machine_note()}")
    rows, chunks, passages = run(args.corpus, args.cold)
    report(rows, load_questions(), chunks, passages)


if __name__ == "__main__":
    main()
