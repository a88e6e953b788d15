"""Tracing overhead per run: bench.orchestration's `run` case with tracing off and on, in one benchmark run.

The run is `Runner.ask` on the orchestration rig (bench/_rig.py): run and thread records in Valkey, the lease,
plan -> one retrieve step (a search through the real toolbox and an in-process MCP server) -> answer, a scripted
zero-latency chat model, a SQLite checkpoint file. Cases:

- **off**: no tracer provider is ever installed and no Langfuse client made: every span Orchestrion, the MCP SDK
  and Langfuse's `propagate_attributes` ask for is OpenTelemetry's no-op (a non-recording span). The process
  counts SDK spans constructed (0 expected, checked) and reports it.
- **off-2**: a second process exactly like `off`: the A/A control, how far two processes of the same code
  differ on this machine (the resolution of the on/off ratio). The baseline is both off processes' runs pooled.
- **on-file**: tracing as the embedded default ships it: `init_tracing` (the Langfuse SDK's span processor, the
  masking hook of observability/masking.py around the exporter) writing the JSON-lines span file.
- **on-otlp**: the same with Langfuse keys and a base URL pointing at a local OTLP/HTTP receiver
  (tests/otlp_receiver.py, in the coordinating process): the Langfuse SDK's own exporter (protobuf, gzip,
  Basic auth to `/api/public/otel/v1/traces`), as against a real Langfuse.

Why one process per case: OpenTelemetry's global tracer provider can be set once per process, and the tracers
Orchestrion and the MCP SDK take at import delegate to it for good once it is set. A provider without span
processors is not "off": the SDK still creates, times and fills every span (and Langfuse's propagation still
copies attributes onto each), so it would hide part of the cost; a switch that swaps providers would add a layer
the product does not have. So each case is a long-lived worker process (spawned, the same code and settings but
tracing), warmed up, and the coordinator runs them in interleaved rounds, one case at a time, in rotating order:
load changes on this shared machine hit every case alike, and the idle workers take no CPU.

Per case: p50/p99 of a run's wall time, CPU per run (the process's, every thread: the exporter's batch thread
included, each round ending with a flush so every span a round made is paid for in that round), spans exported
per run (counted from the span file and the receiver). Target: on / off <= 1.10 at p50 for both on-cases.

    flock /tmp/orchestrion-bench.lock .venv/bin/python -m bench.tracing_overhead [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import Any

import anyio
from opentelemetry import trace
from opentelemetry.sdk import trace as sdk_trace
from pydantic import SecretStr

from bench._report import ERR, OUT, machine_note, percentile, progress, table, verdict
from bench._rig import Rig, open_rig, private_redis, scratch, timed_runs
from core.settings import AgentSettings, LangfuseSettings, Settings
from observability.tracing import Tracing, init_tracing
from tests.otlp_receiver import OtlpReceiver

OFF, OFF_2, ON_FILE, ON_OTLP = "off", "off-2", "on-file", "on-otlp"
CASES = (OFF, OFF_2, ON_FILE, ON_OTLP)
ON_CASES = (ON_FILE, ON_OTLP)
WARM_UP = 10
TARGET = 1.10
LANGFUSE_PATH = "/api/public/otel/v1/traces"
RUN_SPAN = "run orchestration"


@dataclass
class CaseResult:
    times: list[float] = field(default_factory=list)
    cpu: float = 0.0
    runs_in_process: int = 0  # warm-up included: every span the process exported came from one of these
    sdk_spans: int | None = None  # off cases: SDK spans constructed
    exported: int | None = None  # spans of the runs' traces
    traces: int | None = None  # runs' traces
    other: int = 0  # spans of other traces (the toolbox's MCP session start-up)
    names: dict[str, int] = field(default_factory=dict)

    def per_run(self) -> float:
        """Spans exported per run; NaN where nothing is exported."""
        return math.nan if self.exported is None else self.exported / self.runs_in_process


def case_settings(case: str, root: Path, otlp_url: str) -> Settings:
    settings = Settings(data_dir=root / case, agents=AgentSettings())
    if case == ON_OTLP:
        # Langfuse keys, as a deployment with Langfuse configures them: the SDK's own OTLP exporter is used.
        keys = LangfuseSettings(public_key="pk-lf-bench", secret_key=SecretStr("sk-lf-bench-local"), base_url=otlp_url)
        settings = settings.model_copy(update={"langfuse": keys})
    return settings


@contextmanager
def counting_sdk_spans() -> Iterator[list[int]]:
    """Counts SDK spans constructed while it is active (patched in the off cases only, where it must stay 0)."""
    count = [0]
    original = sdk_trace.Span.__init__

    def counted(self: sdk_trace.Span, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        original(self, *args, **kwargs)

    sdk_trace.Span.__init__ = counted  # type: ignore[method-assign]
    try:
        yield count
    finally:
        sdk_trace.Span.__init__ = original  # type: ignore[method-assign]


def worker(case: str, redis_url: str, root: Path, otlp_url: str, conn: Connection) -> None:
    """A case's process: warm up, then run blocks of runs when told, then report what it exported."""
    anyio.run(_serve_case, case, redis_url, root, otlp_url, conn)


async def _serve_case(case: str, redis_url: str, root: Path, otlp_url: str, conn: Connection) -> None:
    settings = case_settings(case, root, otlp_url)
    with counting_sdk_spans() if case not in ON_CASES else _no_count() as created:
        tracing = init_tracing(settings, f"bench-{case}") if case in ON_CASES else None
        result = CaseResult()
        async with open_rig(settings, redis_url) as rig:
            for _ in range(WARM_UP):  # imports, prepared statements, the first MCP call
                await rig.ask()
            result.runs_in_process = WARM_UP
            conn.send("ready")
            while n := await anyio.to_thread.run_sync(conn.recv):
                times, cpu = await _block(rig, tracing, n)
                result.runs_in_process += n
                conn.send((times, cpu))
        if tracing is not None:
            tracing.shutdown()
    if created is not None:
        assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider), "off installed a provider"
        result.sdk_spans = created[0]
    if case == ON_FILE:
        _count_file(result, settings.data_dir / "traces" / "spans.jsonl")
    conn.send(asdict(result))  # a dict: this module is `__mp_main__` here, its classes unknown to the parent


@contextmanager
def _no_count() -> Iterator[None]:
    yield None


async def _block(rig: Rig, tracing: Tracing | None, n: int) -> tuple[list[float], float]:
    """`n` runs; the CPU figure includes flushing what they exported (outside the runs' wall times)."""
    times, cpu = await timed_runs(rig.ask, n)
    if tracing is not None:
        started = time.process_time()
        tracing.flush()
        cpu += time.process_time() - started
    return times, cpu


def _count_file(result: CaseResult, path: Path) -> None:
    spans = [json.loads(line) for line in path.read_text().splitlines()]
    _count(result, [(s["trace_id"], s["name"]) for s in spans])


def _count_receiver(result: CaseResult, receiver: OtlpReceiver) -> None:
    spans = [s for s in receiver.spans if s.service == f"orchestrion-bench-{ON_OTLP}"]
    paths = {s.path for s in spans}
    assert paths == {LANGFUSE_PATH}, f"OTLP spans arrived at {paths}, expected {LANGFUSE_PATH}"
    assert all(s.authorization.startswith("Basic ") for s in spans), "spans without Langfuse's Basic auth"
    _count(result, [(s.trace_id, s.name) for s in spans])


def _count(result: CaseResult, spans: list[tuple[str, str]]) -> None:
    """Spans of the runs' traces (the toolbox's start-up session is a trace of its own, not a run's)."""
    runs = {trace_id for trace_id, name in spans if name == RUN_SPAN}
    mine = [name for trace_id, name in spans if trace_id in runs]
    result.exported, result.traces, result.names = len(mine), len(runs), dict(Counter(mine))
    result.other = len(spans) - len(mine)


def bench(root: Path, quick: bool) -> bool:
    rounds, per_round = (3, 10) if quick else (40, 15)
    results = {case: CaseResult() for case in CASES}
    receiver = OtlpReceiver()
    spawn = multiprocessing.get_context("spawn")
    procs: dict[str, tuple[SpawnProcess, Connection]] = {}
    try:
        with private_redis(root) as redis_url:
            for case in CASES:
                mine, theirs = spawn.Pipe()
                proc = spawn.Process(target=worker, args=(case, redis_url, root, receiver.url, theirs), name=case)
                proc.start()
                procs[case] = (proc, mine)
            ERR.print(f"starting {len(CASES)} case processes and warming up ({WARM_UP} runs each)…")
            for _, conn in procs.values():
                assert conn.recv() == "ready"
            with progress() as bar:
                task = bar.add_task("interleaved rounds", total=rounds * per_round * len(CASES), detail="")
                for r in range(rounds):
                    for case in CASES[r % len(CASES) :] + CASES[: r % len(CASES)]:
                        conn = procs[case][1]
                        conn.send(per_round)
                        times, cpu = conn.recv()
                        results[case].times += times
                        results[case].cpu += cpu
                        bar.update(task, advance=per_round, detail=case)
            for case, (proc, conn) in procs.items():
                conn.send(0)
                measured = results[case]
                results[case] = CaseResult(**conn.recv())
                results[case].times, results[case].cpu = measured.times, measured.cpu
                proc.join(timeout=60)
        _count_receiver(results[ON_OTLP], receiver)
    finally:
        for proc, _ in procs.values():
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=10)
        receiver.close()
    return report(results, rounds, per_round)


def report(results: dict[str, CaseResult], rounds: int, per_round: int) -> bool:
    ms = 1000.0
    # The baseline is both off processes' runs together, so neither process's own luck sets it.
    off = CaseResult(results[OFF].times + results[OFF_2].times, results[OFF].cpu + results[OFF_2].cpu)
    off50, off99, off_cpu = percentile(off.times, 50), percentile(off.times, 99), off.cpu / len(off.times)
    rows = []
    for case, r in {**results, "off (both)": off}.items():
        p50, p99, cpu = percentile(r.times, 50), percentile(r.times, 99), r.cpu / len(r.times)
        rows.append(
            [case, len(r.times), p50 * ms, p99 * ms, p50 / off50, p99 / off99, cpu * ms, cpu / off_cpu, r.per_run()]
        )
    headers = ["case", "runs", "p50", "p99", "p50 / off", "p99 / off", "CPU ms / run", "CPU / off", "spans / run"]
    title = f"Runs with tracing off and on (ms per run; {rounds} rounds of {per_round} per case, interleaved)"
    OUT.print(table(title, headers, rows))
    counted = []
    for case, r in results.items():
        created = "-" if r.sdk_spans is None else r.sdk_spans
        exported = "-" if r.exported is None else r.exported
        traces = "-" if r.traces is None else r.traces
        counted.append([case, r.runs_in_process, created, exported, traces, r.other])
    headers = ["case", "runs (warm-up included)", "SDK spans created", "run spans exported", "run traces", "others"]
    OUT.print(table("Spans counted", headers, counted))
    file_names = results[ON_FILE].names
    runs = results[ON_FILE].runs_in_process
    OUT.print("Spans per run (on-file): " + ", ".join(f"{n} x{c / runs:g}" for n, c in sorted(file_names.items())))
    aa = percentile(results[OFF_2].times, 50) / percentile(results[OFF].times, 50)
    ratios = {case: percentile(results[case].times, 50) / off50 for case in ON_CASES}
    added = {case: (percentile(results[case].times, 50) - off50) * ms for case in ON_CASES}
    OUT.print(
        f"Note: off / off-2 at p50 = {1 / aa:.3f} is the A/A control (two processes of the same code): ratios within "
        f"{abs(aa - 1):.1%} of 1 are within this run's resolution. The baseline is both off processes' runs. Added per "
        "run at p50: " + ", ".join(f"{case} {added[case]:+.2f} ms" for case in ON_CASES) + "."
    )
    worst = max(ON_CASES, key=lambda c: ratios[c])
    quiet = results[OFF].sdk_spans == results[OFF_2].sdk_spans == 0
    met = all(r <= TARGET for r in ratios.values()) and quiet
    detail = ", ".join(f"{case} {ratios[case]:.3f}" for case in ON_CASES)
    detail += f"; A/A {1 / aa:.3f}; spans/run " + ", ".join(f"{case} {results[case].per_run():g}" for case in ON_CASES)
    detail += f"; SDK spans created when off: {results[OFF].sdk_spans}, {results[OFF_2].sdk_spans}"
    name = f"bench.tracing_overhead on/off p50 (worst: {worst})"
    OUT.print(verdict(name, ratios[worst], f"<= {TARGET}", met, detail))
    return met


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.tracing_overhead", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 10 runs per case, not 40 of 15 (a smoke run)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (span file, Valkey log)")
    args = parser.parse_args()
    OUT.print(f"# bench.tracing_overhead · {machine_note()}")
    with scratch("orch-bench-tracing-", keep=args.keep) as root:
        bench(root, args.quick)


if __name__ == "__main__":
    main()
