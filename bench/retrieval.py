"""Retrieval latency: `search_documents` over MCP (real `orchestrion serve`) vs raw weaviate-client queries.

1,000 tenants (registry + Weaviate tenant on both collections), each with 3 small documents of 2-4 chunks
of stdlib documentation. Documents come from a pool (default 600) whose chunks are embedded once with the
real model; the first tenants' documents go through the real ingest pipeline (queue + worker), the rest are
written with ChunkStore.write_document. Every tenant's chunks are stored in its own Weaviate tenant.

At 1, 16 and 64 concurrent clients, three paths run the same plan of queries (hybrid, alpha 0.5, k 5):
  raw-vec  weaviate-client hybrid query with a precomputed query vector (threads, one shared client);
  raw+emb  the same, embedding each query first with the same model in this process, on as many
           threads as the server's model uses: the same work the server does per query, so the target
           applies here: MCP p99 <= 1.3 x raw+emb p99. The server batches concurrent queries
           (rag/batching.py), this path does not; the report shows the server's texts per model call;
  mcp      the MCP SDK client over streamable HTTP, one session per client with its tenant's bearer token;
           the clients are spread over `--mcp-processes` processes (bench/_mcp_clients.py says why);
  mcp-noop the same clients calling the same server's no-op `ping` tool (same auth, tracing, transport):
           the MCP SDKs' own floor per call, which no search can go below.
Targets (issue 14 §6, restating the knowledge issue's): at 1 client, MCP search p50 and p99 <= raw+emb's +
1.1 x mcp-noop's (our search adds nothing beyond the SDK's floor); at 16 and 64, p99 mcp <= 1.3 x raw+emb.
A level runs in rounds: each client takes a random tenant and sends `--per-session` requests; MCP sessions
are opened before a round's clock starts and closed after it stops. Every query string is unique in the run,
so the server's query cache never answers: MCP embeds every query, like raw+emb.

    .venv/bin/python -m bench.retrieval [--quick] [--tenants N] [--requests N] [--levels 1,16,64]
"""

from __future__ import annotations

import argparse
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
from weaviate import WeaviateClient
from weaviate.classes.query import HybridFusion, MetadataQuery
from weaviate.classes.tenants import Tenant, TenantActivityStatus

from bench._corpus import Doc, paragraphs, small_markdown_docs, stdlib_docs
from bench._mcp_clients import NOOP, SEARCH, McpClientProcesses
from bench._report import ERR, OUT, machine_note, percentile, progress, table, verdict
from bench._stack import BenchStack, Deployment, add_env_option, bench_stack, env_from
from core.heap import freeze_startup_heap
from core.stack import resolve_endpoints
from rag.chunking import Chunker, HFTokenCounter, bundled_model_dir
from rag.documents import ChunkText
from rag.embedding import LocalEmbedder
from rag.ingest import Submission, doc_id_for_filename, title_for_filename  # as IngestService derives them: same chunks
from rag.jobs import FINAL_STATES, JobState
from rag.parsing import detect_type, parse
from rag.services import RagServices, connect_weaviate
from rag.store import DocumentInfo, StoredChunk, now_iso
from tests.conftest import settings_from

TARGET = 1.3
FLOOR_FACTOR = 1.1  # at one client: mcp <= raw+emb + FLOOR_FACTOR x mcp-noop
PATHS = ("raw-vec", "raw+emb", "mcp", "mcp-noop")
DOCS_PER_TENANT = 3
INACTIVE_NOTE = (
    "Weaviate tenants are INACTIVE (files closed) except those a level queries, which are activated before its "
    "clock starts: with every tenant active, the embedded weaviate-server hit this machine's open-files limit "
    "(20,000, not raisable here) at ~476 of 1,000 tenants ('too many open files')"
)
QUERY_PROPERTIES = ["text", "title", "headings"]


@dataclass
class PoolDoc:
    doc: Doc
    chunks: list[ChunkText]
    vectors: list[list[float]] = field(default_factory=list)


@dataclass
class Slot:
    """One client's share of a round: a tenant and the queries it sends, in order."""

    tenant: str
    queries: list[str]


@dataclass
class PathResult:
    path: str
    level: int
    latencies: list[float] = field(default_factory=list)
    timed_s: float = 0.0
    errors: int = 0
    empty: int = 0
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per role during the timed rounds
    server_s: float = 0.0  # mcp only: time the server's own histogram records for POST /mcp in the rounds
    server_n: float = 0.0
    embed_texts: float = 0.0  # mcp only: texts the server embedded, and in how many model calls
    embed_calls: float = 0.0
    asleep: int = 0  # the level's tenants found not ACTIVE at its end (a valid level has none)

    @property
    def embed_batch(self) -> float:
        return self.embed_texts / self.embed_calls if self.embed_calls else math.nan

    @property
    def server_ms(self) -> float:
        return 1000 * self.server_s / self.server_n if self.server_n else math.nan

    @property
    def client_ms(self) -> float:
        return 1000 * sum(self.latencies) / len(self.latencies) if self.latencies else math.nan

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.timed_s if self.timed_s else 0.0

    def p(self, q: float) -> float:
        return 1000 * percentile(self.latencies, q)

    def cpu_ms(self, role: str | None = None) -> float:
        """CPU milliseconds per request, of one role or of all."""
        seconds = sum(self.cpu.values()) if role is None else self.cpu.get(role, 0.0)
        return 1000 * seconds / len(self.latencies) if self.latencies else math.nan


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.retrieval", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 100 tenants, ~64 requests per level")
    parser.add_argument("--tenants", type=int, help="tenants (default 1000; --quick 100)")
    parser.add_argument("--ingested", type=int, help="tenants whose documents go through the real ingest (default 20)")
    parser.add_argument("--pool", type=int, help="distinct documents (default 600; --quick 120)")
    parser.add_argument("--requests", type=int, help="requests per level and path (default 320; --quick 64)")
    parser.add_argument("--levels", default="1,16,64", help="concurrency levels (default 1,16,64)")
    parser.add_argument("--per-session", type=int, default=5, help="requests per client per round (default 5)")
    parser.add_argument(
        "--mcp-processes", type=int, default=4, help="processes the MCP clients are spread over (default 4)"
    )
    parser.add_argument("--level-timeout", type=float, default=600.0, help="bound on one path at one level (s)")
    parser.add_argument("--seed", type=int, default=11)
    add_env_option(parser)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs) after the run")
    args = parser.parse_args()
    args.tenants = args.tenants or (100 if args.quick else 1000)
    args.ingested = min(args.tenants, args.ingested if args.ingested is not None else (5 if args.quick else 20))
    args.pool = args.pool or (120 if args.quick else 600)
    args.requests = args.requests or (64 if args.quick else 320)
    args.levels = [int(x) for x in args.levels.split(",")]
    return args


# --- data ---------------------------------------------------------------------------------------------------


def build_pool(size: int, seed: int, embedder: LocalEmbedder) -> list[PoolDoc]:
    """Small Markdown documents of stdlib paragraphs, chunked as the pipeline does, chunks embedded once."""
    with ERR.status("rendering stdlib documentation with pydoc…"):
        docs = small_markdown_docs(paragraphs(stdlib_docs(160)), size, target_chars=1100, seed=seed, label="kb")
    chunker = Chunker(HFTokenCounter.from_model_dir(bundled_model_dir(), max_seq_length=256), 200, 32)
    pool = []
    for doc in docs:
        parsed = parse(
            doc.content, detect_type(doc.filename, None, doc.content), fallback_title=title_for_filename(doc.filename)
        )
        pool.append(PoolDoc(doc, chunker.chunk(parsed)))
    texts = [c.embed_text for p in pool for c in p.chunks]
    with ERR.status(f"embedding {len(texts)} pool chunks once…"):
        vectors = embedder.embed(texts)
    position = 0
    for p in pool:
        p.vectors, position = vectors[position : position + len(p.chunks)], position + len(p.chunks)
    return pool


def provision_tenants(rag: RagServices, names: list[str]) -> tuple[dict[str, str], float, float]:
    """Registry entry and bearer token per tenant (the registry API), then Weaviate tenants in batches of 100."""
    tokens: dict[str, str] = {}
    started = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("registry: tenants + tokens", total=len(names), detail="")
        for name in names:
            rag.registry.add_tenant(name)
            tokens[name] = rag.registry.issue_token(name, "bench")
            bar.advance(task)
    registry_s = time.perf_counter() - started
    started = time.perf_counter()
    for collection in (rag.store.chunks_name, rag.store.docs_name):
        tenants = rag.weaviate.collections.use(collection).tenants
        for start in range(0, len(names), 100):
            tenants.create([Tenant(name=n) for n in names[start : start + 100]])
    return tokens, registry_s, time.perf_counter() - started


def set_activity(rag: RagServices, tenants: Sequence[str], status: TenantActivityStatus) -> None:
    """Activate or deactivate tenants on both collections, 100 per request."""
    for name in (rag.store.chunks_name, rag.store.docs_name):
        collection = rag.weaviate.collections.use(name)
        for start in range(0, len(tenants), 100):
            collection.tenants.update([Tenant(name=t, activity_status=status) for t in tenants[start : start + 100]])


def fill_tenants(rag: RagServices, assignment: dict[str, list[PoolDoc]], ingested: list[str]) -> tuple[int, float]:
    """Real ingest for `ingested` tenants (queued, then waited for); direct writes for the rest, 100 tenants at a
    time, each hundred deactivated once written (see INACTIVE_NOTE). Returns (chunks, seconds of direct writes)."""
    jobs = {
        t: rag.ingest.submit(t, [Submission(content=p.doc.content, filename=p.doc.filename) for p in assignment[t]])
        for t in ingested
    }
    direct = [t for t in assignment if t not in jobs]
    started = time.perf_counter()
    with progress() as bar, ThreadPoolExecutor(8) as pool:
        task = bar.add_task("writing chunks (ChunkStore.write_document)", total=len(direct), detail="")
        for start in range(0, len(direct), 100):
            batch = direct[start : start + 100]
            for _ in pool.map(lambda t: write_tenant(rag, t, assignment[t]), batch):
                bar.advance(task)
            set_activity(rag, batch, TenantActivityStatus.INACTIVE)
    write_s = time.perf_counter() - started
    for tenant, statuses in jobs.items():
        for status in statuses:
            final = wait_job(rag, tenant, status.job_id)
            if final != JobState.DONE:
                raise RuntimeError(f"ingest job of {tenant} ended {final}")
    set_activity(rag, ingested, TenantActivityStatus.INACTIVE)
    return sum(len(p.chunks) for docs in assignment.values() for p in docs), write_s


def wait_job(rag: RagServices, tenant: str, job_id: str, timeout: float = 600.0) -> JobState:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = rag.ingest.status(tenant, job_id).state
        if state in FINAL_STATES:
            return state
        time.sleep(0.2)
    raise TimeoutError(f"ingest job {job_id} of {tenant} not finished after {timeout:.0f}s")


def write_tenant(rag: RagServices, tenant: str, docs: list[PoolDoc]) -> None:
    for p in docs:
        doc_id = doc_id_for_filename(p.doc.filename)
        info = DocumentInfo(
            doc_id,
            p.chunks[0].embed_text.split("\n", 1)[0],
            p.doc.filename,
            "markdown",
            [],
            {},
            uuid.uuid4().hex,
            len(p.chunks),
            now_iso(),
        )
        stored = [StoredChunk(c.index, c.text, c.heading_path, uuid.uuid4().hex) for c in p.chunks]
        rag.store.write_document(tenant, info, stored, p.vectors)


# --- the plan -------------------------------------------------------------------------------------------------


class QueryMaker:
    """Natural queries: 5-9 consecutive words of one of the tenant's chunks; unique in the whole run."""

    def __init__(self, assignment: dict[str, list[PoolDoc]], rng: random.Random) -> None:
        self.assignment = assignment
        self.rng = rng
        self.used: set[str] = set()

    def make(self, tenant: str) -> str:
        for _ in range(1000):
            words = self.rng.choice(self.rng.choice(self.assignment[tenant]).chunks).text.split()
            size = self.rng.randint(5, 9)
            start = self.rng.randrange(max(1, len(words) - size))
            query = " ".join(words[start : start + size])[:500]
            if query and query not in self.used:
                self.used.add(query)
                return query
        raise RuntimeError(f"no fresh query for {tenant}")


def plan_level(level: int, requests: int, per_session: int, tenants: list[str], maker: QueryMaker) -> list[list[Slot]]:
    rounds = max(1, math.ceil(requests / (level * per_session)))
    plan = []
    for _ in range(rounds):
        chosen = maker.rng.sample(tenants, level) if level <= len(tenants) else maker.rng.choices(tenants, k=level)
        plan.append([Slot(t, [maker.make(t) for _ in range(per_session)]) for t in chosen])
    return plan


# --- the three paths ---------------------------------------------------------------------------------------------


def raw_hybrid(client: WeaviateClient, collection: str, tenant: str, query: str, vector: Sequence[float]) -> int:
    found = (
        client.collections.use(collection)
        .with_tenant(tenant)
        .query.hybrid(
            query,
            vector=list(vector),
            alpha=0.5,
            fusion_type=HybridFusion.RELATIVE_SCORE,
            query_properties=QUERY_PROPERTIES,
            limit=5,
            return_metadata=MetadataQuery(score=True),
        )
    )
    return len(found.objects)


CpuReader = Callable[[], dict[str, float]]


def add_cpu(result: PathResult, before: dict[str, float], after: dict[str, float]) -> None:
    for role, seconds in after.items():
        result.cpu[role] = result.cpu.get(role, 0.0) + seconds - before.get(role, 0.0)


def raw_round(
    pool: ThreadPoolExecutor, slots: list[Slot], one: Callable[[str, str], int], result: PathResult, cpu: CpuReader
) -> None:
    """One thread per slot sends its queries in order; the round is timed from start to the last answer."""

    def client(slot: Slot) -> None:
        for query in slot.queries:
            started = time.perf_counter()
            try:
                hits = one(slot.tenant, query)
            except Exception:  # noqa: BLE001 - counted and reported
                result.errors += 1
                continue
            result.latencies.append(time.perf_counter() - started)
            result.empty += hits == 0

    before, started = cpu(), time.perf_counter()
    list(pool.map(client, slots))
    result.timed_s += time.perf_counter() - started
    add_cpu(result, before, cpu())


SERVER_METRICS = re.compile(
    r'^orchestrion_(http_request_duration_seconds|embed_batch_texts)_(sum|count)(?:\{method="POST",route="/mcp"\})? '
    r"(\S+)$",
    re.MULTILINE,
)


def server_stats(url: str) -> dict[str, float]:
    """From the API server's /metrics: its own latency histogram for POST /mcp, and its embedding
    model calls (texts and calls), keyed like `http_request_duration_seconds_sum`."""
    text = httpx.get(url.removesuffix("/mcp") + "/metrics", timeout=30.0).text
    return {f"{name}_{kind}": float(value) for name, kind, value in SERVER_METRICS.findall(text)}


def mcp_round(
    clients: McpClientProcesses,
    url: str,
    tokens: dict[str, str],
    slots: list[Slot],
    result: PathResult,
    cpu: CpuReader,
    tool: str = SEARCH,
) -> None:
    """Every client opens its session (untimed), then all send their queries; timed from go to the last answer.
    The server's histogram is read while the clients wait, before go and after the last answer."""
    children = clients.open_round([(tokens[s.tenant], s.queries) for s in slots], tool)
    server_before = server_stats(url)
    before, started = cpu(), time.perf_counter()
    clients.go(children)
    done = clients.finish_round(children)
    result.timed_s += time.perf_counter() - started
    add_cpu(result, before, cpu())
    after = server_stats(url)

    def grew(key: str) -> float:
        return after.get(key, 0.0) - server_before.get(key, 0.0)

    result.latencies += done.latencies
    result.errors += done.errors
    result.empty += done.empty
    result.cpu["bench"] = result.cpu.get("bench", 0.0) + done.cpu_s
    result.server_s += grew("http_request_duration_seconds_sum")
    result.server_n += grew("http_request_duration_seconds_count")
    result.embed_texts += grew("embed_batch_texts_sum")
    result.embed_calls += grew("embed_batch_texts_count")


# --- report ---------------------------------------------------------------------------------------------------


LATENCY_HEADERS = [
    "path",
    "clients",
    "requests",
    "mean ms",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "req/s",
    "errors",
    "empty",
    "CPU ms/req",
    "client",
    "server",
    "weaviate",
    "server-side ms",
    "texts/embed call",
]
RATIO_HEADERS = [
    "clients",
    "p99 mcp/raw+emb",
    "p99 added ms",
    "p50 mcp/raw+emb",
    "p50 added ms",
    "p50 noop ms",
    "p99 noop ms",
    "p50 mcp/floor",
    "p99 mcp/floor",
    "p99 mcp/raw-vec",
    "req/s mcp/raw+emb",
    "CPU/req mcp/raw+emb",
    "target",
    "",
]


def floor_ratio(mcp: PathResult, emb: PathResult, noop: PathResult, q: float) -> float:
    """MCP search over its floor: raw+emb's latency plus FLOOR_FACTOR x the no-op tool's, at quantile q."""
    return mcp.p(q) / (emb.p(q) + FLOOR_FACTOR * noop.p(q))


def latency_row(r: PathResult) -> tuple[object, ...]:
    return (
        r.path,
        r.level,
        len(r.latencies),
        r.client_ms,
        r.p(50),
        r.p(95),
        r.p(99),
        r.throughput,
        r.errors,
        r.empty,
        r.cpu_ms(),
        r.cpu_ms("bench"),
        r.cpu_ms("api"),
        r.cpu_ms("weaviate"),
        r.server_ms,
        r.embed_batch,
    )


def ratio_row(mcp: PathResult, emb: PathResult, vec: PathResult, noop: PathResult) -> tuple[object, ...]:
    if mcp.asleep:
        return (mcp.level, *(math.nan,) * 12, f"INVALID: {mcp.asleep} tenants went INACTIVE during the level")
    if mcp.level == 1:
        target = f"p50, p99 <= raw+emb + {FLOOR_FACTOR} x noop"
        met = max(floor_ratio(mcp, emb, noop, 50), floor_ratio(mcp, emb, noop, 99)) <= 1.0
    else:
        target = f"p99 <= {TARGET} x raw+emb"
        met = mcp.p(99) / emb.p(99) <= TARGET
    met = met and mcp.errors == 0 and noop.errors == 0
    return (
        mcp.level,
        mcp.p(99) / emb.p(99),
        mcp.p(99) - emb.p(99),
        mcp.p(50) / emb.p(50),
        mcp.p(50) - emb.p(50),
        noop.p(50),
        noop.p(99),
        floor_ratio(mcp, emb, noop, 50),
        floor_ratio(mcp, emb, noop, 99),
        mcp.p(99) / vec.p(99),
        mcp.throughput / emb.throughput,
        mcp.cpu_ms() / emb.cpu_ms(),
        target,
        "PASS" if met else "MISS",
    )


def worst_figure(by: dict[tuple[str, int], PathResult], levels: list[int]) -> float:
    """The level-by-level figure each target judges, as a ratio to its bound (<= 1.0 passes everywhere)."""
    figures = []
    for n in levels:
        mcp, emb = by[("mcp", n)], by[("raw+emb", n)]
        if n == 1:
            noop = by[("mcp-noop", n)]
            figures.append(max(floor_ratio(mcp, emb, noop, 50), floor_ratio(mcp, emb, noop, 99)))
        else:
            figures.append(mcp.p(99) / emb.p(99) / TARGET)
    return max(figures)


def report(results: list[PathResult], setup: list[tuple[str, object]]) -> None:
    OUT.print(table("Setup", ["step", "value"], setup))
    OUT.print(INACTIVE_NOTE + ".")
    title = (
        "search_documents latency (hybrid, alpha 0.5, k 5). CPU ms per request by process: client = this process "
        "and its MCP client processes (MCP SDK or weaviate-client, and raw+emb's embedding), server = orchestrion "
        "serve. server-side ms = the server's own histogram for POST /mcp; texts/embed call = queries the server "
        "embedded per model call"
    )
    OUT.print(table(title, LATENCY_HEADERS, [latency_row(r) for r in results]))
    by = {(r.path, r.level): r for r in results}
    levels = sorted({r.level for r in results})
    rows = [ratio_row(by[("mcp", n)], by[("raw+emb", n)], by[("raw-vec", n)], by[("mcp-noop", n)]) for n in levels]
    floor = f"floor = raw+emb + {FLOOR_FACTOR} x the no-op tool over the same MCP stack"
    OUT.print(table(f"Ratios (mcp-noop = the `ping` tool; {floor})", RATIO_HEADERS, rows))
    met = all(row[-1] == "PASS" for row in rows)
    OUT.print(
        verdict(
            "retrieval: worst level's figure over its bound",
            worst_figure(by, levels),
            f"<= 1.0 (1 client: p50 and p99 mcp <= {floor}; 16 and 64: p99 mcp <= {TARGET} x raw+emb)",
            met,
        )
    )


def main() -> None:
    args = parse_args()
    OUT.print(f"[bold]bench.retrieval[/bold] · {machine_note()} · worker/API env: {' '.join(args.env) or 'default'}")
    rng = random.Random(args.seed)
    embedder = LocalEmbedder(32)
    pool = build_pool(args.pool, args.seed, embedder)
    names = [f"r{i:04d}" for i in range(args.tenants)]
    assignment = {t: rng.sample(pool, DOCS_PER_TENANT) for t in names}
    with bench_stack(keep=args.keep) as stack:
        deployment = stack.deploy(workers=1, concurrency=1, api=True, extra_env=env_from(args))
        rag = deployment.open_rag()
        tokens, registry_s, weaviate_s = provision_tenants(rag, names)
        chunks, write_s = fill_tenants(rag, assignment, names[: args.ingested])
        setup: list[tuple[str, object]] = [
            ("tenants (registry add + token), s", f"{args.tenants} in {registry_s:.1f}"),
            ("Weaviate tenants (2 collections, batches of 100), s", f"{args.tenants} in {weaviate_s:.1f}"),
            ("documents / chunks stored", f"{args.tenants * DOCS_PER_TENANT} / {chunks}"),
            ("tenants through real ingest / direct writes", f"{args.ingested} / {args.tenants - args.ingested}"),
            ("direct writes, s", f"{write_s:.1f}"),
            ("open files held by weaviate-server after setup", stack.open_files("weaviate")),
            (
                "ChunkStore.has_tenant (the check a tenant unseen for 30 s costs), p50 ms",
                tenant_check_ms(rag, names, rng),
            ),
            ("requests per client per round (session)", args.per_session),
            ("extra environment of worker + API", " ".join(args.env) or "none"),
        ]
        runner, maker = LevelRunner(args, stack, deployment, tokens, embedder), QueryMaker(assignment, rng)
        try:
            runner.warm_up(names[0], maker)
            cold = runner.cold_query_ms(rng.sample(names[1:], min(20, len(names) - 1)), maker)
            setup.append(("raw-vec query to an INACTIVE tenant (auto-activation), p50 / max ms", cold))
            # As the servers do (core/heap.py): a full GC pass over this process's start-up heap
            # would stall the raw paths and the MCP client alike, for ~0.4 s.
            freeze_startup_heap()
            results = [r for level in args.levels for r in runner.run(level, names, maker)]
        finally:
            runner.close()
    report(results, setup)


def tenant_check_ms(rag: RagServices, tenants: list[str], rng: random.Random, samples: int = 50) -> float:
    """What `ChunkStore.require_tenant` pays, through `has_tenant`, when its 30 s cache has no entry for a tenant."""
    times = []
    for tenant in rng.sample(tenants, min(samples, len(tenants))):
        started = time.perf_counter()
        rag.store.has_tenant(tenant)
        times.append(time.perf_counter() - started)
    return 1000 * percentile(times, 50)


class LevelRunner:
    """Runs the three paths over one plan per concurrency level."""

    def __init__(
        self,
        args: argparse.Namespace,
        stack: BenchStack,
        deployment: Deployment,
        tokens: dict[str, str],
        embedder: LocalEmbedder,
    ) -> None:
        settings = settings_from(deployment.env)
        if settings.rag.query_embed_threads:
            # raw+emb embeds as the server's model does: one thread per call by default. With one per core, a
            # query embedded from a worker thread took ~20 ms against ~12 ms (torch, before ONNX Runtime).
            embedder = LocalEmbedder(32, settings.rag.query_embed_threads)
        self.args = args
        self.cpu: CpuReader = stack.cpu_by_role
        self.url = f"{deployment.api_url}/mcp"
        self.tokens = tokens
        self.embedder = embedder
        self.client = connect_weaviate(settings, resolve_endpoints(settings))
        self.rag = deployment.rags[0]
        self.collection = self.rag.store.chunks_name
        self.mcp = McpClientProcesses(self.url, args.mcp_processes)

    def close(self) -> None:
        self.client.close()
        self.mcp.close()

    def cold_query_ms(self, tenants: list[str], maker: QueryMaker) -> str:
        """One raw-vec query to each of `tenants` while INACTIVE: Weaviate activates the tenant on the way."""
        queries = [maker.make(t) for t in tenants]
        vectors = self.embedder.embed(queries)
        times = []
        for tenant, query, vector in zip(tenants, queries, vectors, strict=True):
            started = time.perf_counter()
            self.hybrid(tenant, query, vector)
            times.append(1000 * (time.perf_counter() - started))
        set_activity(self.rag, tenants, TenantActivityStatus.INACTIVE)
        return f"{percentile(times, 50):.1f} / {max(times):.1f}"

    def load_shards(self, tenants: list[str]) -> None:
        """One untimed query per tenant. Weaviate loads an activated tenant's shard on its first query
        (lazily, ~15-150 ms, more when many load at once); left to the timed rounds, that cost lands on
        whichever path a round runs first, and at 16 clients those loads alone set every path's p99."""
        probe = self.embedder.embed(["warm-up"])[0]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda t: self.hybrid(t, "warm-up", probe), tenants))

    def inactive(self, tenants: list[str]) -> int:
        found = self.rag.weaviate.collections.use(self.collection).tenants.get_by_names(tenants)
        return sum(1 for t in tenants if t not in found or found[t].activity_status != TenantActivityStatus.ACTIVE)

    def hybrid(self, tenant: str, query: str, vector: Sequence[float]) -> int:
        return raw_hybrid(self.client, self.collection, tenant, query, vector)

    def warm_up(self, tenant: str, maker: QueryMaker) -> None:
        """Load the model in the API server, open the connections and make every MCP client process's first
        calls (imports, schema validators), untimed: one short round per path, a session per client process."""
        clients = self.args.mcp_processes
        with ERR.status("warming up the API server and clients…"):
            self.run(clients, [tenant], maker, requests=3 * clients, per_session=3)

    def run(
        self, level: int, tenants: list[str], maker: QueryMaker, requests: int = 0, per_session: int = 0
    ) -> list[PathResult]:
        """The paths over one plan, interleaved round by round (in rotating order), so that load changes
        on the machine hit every path alike; raw-vec's vectors are computed before any clock starts."""
        plan = plan_level(level, requests or self.args.requests, per_session or self.args.per_session, tenants, maker)
        active = sorted({s.tenant for slots in plan for s in slots})
        set_activity(self.rag, active, TenantActivityStatus.ACTIVE)
        try:
            self.load_shards(active)
            results = self._run(level, plan)
            # A tenant put to sleep mid-level makes some path pay to wake it: the level would not
            # compare like with like (the API server offloads tenants it thinks idle, rag/activity.py).
            asleep = self.inactive(active)
            for result in results:
                result.asleep = asleep
            return results
        finally:
            set_activity(self.rag, active, TenantActivityStatus.INACTIVE)

    def _run(self, level: int, plan: list[list[Slot]]) -> list[PathResult]:
        queries = [q for slots in plan for s in slots for q in s.queries]
        vectors = dict(zip(queries, self.embedder.embed(queries), strict=True))
        results = {path: PathResult(path, level) for path in PATHS}
        rounds: dict[str, Callable[[list[Slot]], None]] = {
            "raw-vec": lambda slots: raw_round(
                pool, slots, lambda t, q: self.hybrid(t, q, vectors[q]), results["raw-vec"], self.cpu
            ),
            "raw+emb": lambda slots: raw_round(
                pool, slots, lambda t, q: self.hybrid(t, q, self.embedder.embed([q])[0]), results["raw+emb"], self.cpu
            ),
            "mcp": lambda slots: mcp_round(self.mcp, self.url, self.tokens, slots, results["mcp"], self.cpu),
            "mcp-noop": lambda slots: mcp_round(
                self.mcp, self.url, self.tokens, slots, results["mcp-noop"], self.cpu, NOOP
            ),
        }
        deadline = time.monotonic() + self.args.level_timeout
        with ThreadPoolExecutor(level) as pool, progress() as bar:
            task = bar.add_task(
                f"{level} concurrent clients", total=len(plan), detail=f"rounds ({len(PATHS)} paths each)"
            )
            for number, slots in enumerate(plan):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{level} clients: {self.args.level_timeout:.0f}s exceeded")
                turn = number % len(PATHS)
                for path in PATHS[turn:] + PATHS[:turn]:
                    rounds[path](slots)
                bar.advance(task)
        return [results[path] for path in PATHS]


if __name__ == "__main__":
    main()
