"""`orchestrion top`, `runs` and `trace`, run as a user runs them: `top` against real prometheus_client
expositions over HTTP (and one closed port), live under tmux; `runs` and `trace` on a span file written by
the real tracing path (init_tracing's JSON-lines exporter, run observations, the Langfuse SDK's generation)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from observability.figures import Scrape, combine, histogram_quantile, increase, parse
from observability.instruments import LATENCY_BUCKETS
from observability.span_file import RunTrace, records, run_trace
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


# --- the quantile and window math ---------------------------------------------------------------------------


def test_histogram_quantile_interpolates_in_the_bucket_the_rank_falls_in_as_promql_does() -> None:
    buckets = {0.1: 10.0, 0.5: 30.0, 1.0: 40.0, math.inf: 40.0}
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.3)  # rank 20: 0.1 + 0.4 * 10/20
    assert histogram_quantile(0.99, buckets) == pytest.approx(0.98)  # rank 39.6: 0.5 + 0.5 * 9.6/10
    assert histogram_quantile(0.25, buckets) == pytest.approx(0.1)  # the first bucket starts at 0
    assert histogram_quantile(0.9, {0.1: 1.0, math.inf: 10.0}) == 0.1  # in +Inf: the highest finite bound
    assert histogram_quantile(0.5, {0.1: 0.0, math.inf: 0.0}) is None  # nothing observed
    assert histogram_quantile(0.5, {0.1: 3.0, 1.0: 5.0}) is None  # no +Inf bucket: not a histogram


def test_a_window_is_the_increase_per_endpoint_with_resets_and_shared_gauges_counted_once() -> None:
    def scrape(at: float, requests: float, depth: float, in_flight: float) -> Scrape:
        return parse(
            "# TYPE orchestrion_http_requests_total counter\n"
            f'orchestrion_http_requests_total{{route="/a",status="200"}} {requests}\n'
            "# TYPE orchestrion_queue_depth gauge\n"
            f'orchestrion_queue_depth{{queue="runs"}} {depth}\n'
            "# TYPE orchestrion_http_in_flight gauge\n"
            f"orchestrion_http_in_flight {in_flight}\n",
            at,
        )

    requests = ("orchestrion_http_requests_total", (("route", "/a"), ("status", "200")))
    depth = ("orchestrion_queue_depth", (("queue", "runs"),))
    in_flight = ("orchestrion_http_in_flight", ())
    api = increase(scrape(2, 30, 4, 1), scrape(1, 10, 9, 5))
    restarted = increase(scrape(2, 3, 4, 2), scrape(1, 50, 4, 0))  # the counter went back: a new process
    assert api[requests] == 20 and restarted[requests] == 3
    both = combine([api, restarted])
    assert both[requests] == 23
    assert both[depth] == 4  # read from the broker by both: once, not 8
    assert both[in_flight] == 3  # each process's own: summed


# --- `orchestrion top` against real expositions -----------------------------------------------------------


class Exposition:
    """A process's metrics as Orchestrion names them (docs/OBSERVABILITY.md), on a real /metrics server."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        model = ["deployment", "tier"]
        self.ttft = Histogram("orchestrion_model_ttft_seconds", "", model, buckets=LATENCY_BUCKETS, registry=registry)
        self.latency = Histogram(
            "orchestrion_model_latency_seconds", "", model, buckets=LATENCY_BUCKETS, registry=registry
        )
        self.tokens = Counter("orchestrion_model_tokens_total", "", [*model, "direction"], registry=registry)
        self.model_in_flight = Gauge("orchestrion_model_in_flight", "", ["deployment"], registry=registry)
        self.circuit = Gauge("orchestrion_model_circuit_open", "", ["deployment"], registry=registry)
        self.cost = Counter("orchestrion_model_cost_usd_total", "", ["tenant", "deployment"], registry=registry)
        http = ["method", "route", "status"]
        self.requests = Counter("orchestrion_http_requests_total", "", http, registry=registry)
        self.http = Histogram(
            "orchestrion_http_request_duration_seconds", "", http, buckets=LATENCY_BUCKETS, registry=registry
        )
        self.rejections = Counter("orchestrion_http_rejections_total", "", ["reason"], registry=registry)
        self.depth = Gauge("orchestrion_queue_depth", "", ["queue"], registry=registry)
        self.wait = Histogram(
            "orchestrion_celery_task_wait_seconds", "", ["task", "queue"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.runs = Histogram(
            "orchestrion_run_duration_seconds", "", ["graph", "outcome"], buckets=LATENCY_BUCKETS, registry=registry
        )
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, "127.0.0.1", registry=registry)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    def model_calls(self, deployment: str, ttft_s: float, n: int) -> None:
        for _ in range(n):
            self.ttft.labels(deployment, "small").observe(ttft_s)
            self.latency.labels(deployment, "small").observe(ttft_s * 2)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def api() -> Iterator[Exposition]:
    exposition = Exposition()
    yield exposition
    exposition.close()


@pytest.fixture
def worker() -> Iterator[Exposition]:
    exposition = Exposition()
    yield exposition
    exposition.close()


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "ORCHESTRION_DATA_DIR": str(data_dir), "COLUMNS": "220", "TERM": "xterm", **extra}


def _cli(data_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrion", *args], env=_env(data_dir, **env), cwd=ROOT,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def _line(output: str, start: str) -> str:
    [line] = [line for line in output.splitlines() if line.strip().startswith(start)]
    return line


def test_top_once_shows_quantiles_counts_and_shares_from_two_endpoints_and_says_which_is_down(
    tmp_path: Path, api: Exposition, worker: Exposition
) -> None:
    api.model_calls("llama-a", 0.07, 50)  # bucket 0.05-0.1
    worker.model_calls("llama-a", 0.7, 50)  # bucket 0.5-1: p50 = 0.1, p99 = 0.5 + 0.5 * 49/50 (mean: 0.385)
    worker.tokens.labels("llama-a", "small", "out").inc(500)
    worker.tokens.labels("llama-a", "small", "in").inc(100)
    api.model_in_flight.labels("llama-a").set(1)
    worker.model_in_flight.labels("llama-a").set(2)
    for process in (api, worker):  # both read the breaker and the broker: the same value, shown once
        process.circuit.labels("llama-b").set(1)
        process.circuit.labels("llama-a").set(0)
        process.depth.labels("runs").set(4)
    for i in range(100):
        status = "500" if i < 10 else "200"
        api.requests.labels("POST", "/v1/search", status).inc()
        api.http.labels("POST", "/v1/search", status).observe(3.0 if i == 0 else 0.02)
    api.rejections.labels("tenant_runs").inc(3)
    worker.wait.labels("orchestrion.run", "runs").observe(0.3)
    worker.wait.labels("orchestrion.run", "runs").observe(0.3)
    worker.runs.labels("orchestration", "success").observe(3.0)
    worker.runs.labels("orchestration", "success").observe(3.0)
    worker.cost.labels("acme", "llama-a").inc(0.0123)
    closed = f"http://127.0.0.1:{free_port()}/metrics"

    done = _cli(tmp_path, "top", "--once", "--url", api.url, "--url", worker.url, "--url", closed)

    assert done.returncode == 0, done.stderr
    frame = done.stdout
    assert "cumulative since each process started" in frame
    assert f"✗ {closed} unreachable (ConnectError" in frame
    assert f"✓ {api.url}" in frame and f"✓ {worker.url}" in frame
    # calls, TTFT p50 / p99, latency p50 / p99, out tokens, tok/s p50 (not exported: —), errors (—), in flight, circuit
    # (latencies are twice the TTFTs: buckets 0.1-0.25 and 1-2.5)
    expected = ["llama-a", "100", "100 ms", "990 ms", "250 ms", "2.47 s", "500", "—", "—", "3", "closed"]
    assert re.split(r"\s{2,}", _line(frame, "llama-a").strip()) == expected
    assert "open" in _line(frame, "llama-b")
    # 100 requests, p50 in 0.01-0.025 (rank 50 of 99), p99 at the bucket's top, 10 of 100 answered 5xx
    assert re.search(r"/v1/search\s+100\s+18 ms\s+25 ms\s+10\.0%", frame)
    assert re.search(r"tenant_runs\s+3\b", frame)
    assert re.search(r"runs\s+4\s+2\s+375 ms\s+49[78] ms\s+—", frame)  # depth once; waits 0.25-0.5; no run time
    assert re.search(r"success\s+2\s+3\.75 s", frame)
    assert re.search(r"acme\s+\$0\.0123", frame)
    assert re.search(r"requests in flight\s+—", frame)  # not exported by these processes


def test_top_once_with_no_endpoint_answering_prints_the_frame_and_fails(tmp_path: Path) -> None:
    done = _cli(tmp_path, "top", "--once", "--url", f"http://127.0.0.1:{free_port()}/metrics")
    assert done.returncode == 1
    assert "unreachable" in done.stdout and "Traceback" not in done.stdout + done.stderr


class _NotMetrics(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"<html><body>a web page</body></html>"
        self.send_response(404 if self.path == "/missing" else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


def test_top_once_says_which_endpoint_is_not_prometheus(tmp_path: Path, api: Exposition) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotMetrics)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        done = _cli(tmp_path, "top", "--once", "--url", f"{base}/page", "--url", f"{base}/missing", "--url", api.url)
    finally:
        server.shutdown()
        server.server_close()
    assert done.returncode == 0  # one endpoint answered
    assert f"✗ {base}/page not Prometheus text (invalid metric name" in done.stdout
    assert f"✗ {base}/missing answered HTTP 404" in done.stdout
    assert f"✓ {api.url}" in done.stdout


class Tmux:
    """A tmux server of the test's own (its own socket), one detached 200x50 session."""

    def __init__(self, command: list[str]) -> None:
        self.socket = f"orchestrion-top-{uuid.uuid4().hex[:8]}"
        self.run("new-session", "-d", "-s", "top", "-x", "200", "-y", "50", "-c", str(ROOT), *command)
        self.run("set-option", "-t", "top", "window-size", "manual")
        self.run("resize-window", "-t", "top", "-x", "200", "-y", "50")

    def run(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True)
        return done.stdout

    def wait_for(self, pattern: str, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.run("capture-pane", "-p", "-t", "top")
            if re.search(pattern, shown):
                return shown
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never shown; the pane:\n{self.run('capture-pane', '-p', '-t', 'top')}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], check=False)


def test_top_live_in_tmux_shows_the_window_between_scrapes_after_the_cumulative_first_frame(
    tmp_path: Path, api: Exposition
) -> None:
    assert shutil.which("tmux"), "tmux is needed (apt-get install tmux)"
    api.model_calls("llama-a", 0.07, 50)
    api.model_calls("llama-a", 0.7, 50)
    tmux = Tmux([
        "env", "-u", "COLUMNS", "-u", "LINES", f"ORCHESTRION_DATA_DIR={tmp_path}",  # the pane's own size
        sys.executable, "-m", "orchestrion", "top", "--url", api.url, "--interval", "0.5", "--window", "600",
    ])  # fmt: skip
    try:
        first = tmux.wait_for(r"llama-a\s+100\s")
        assert "cumulative since each process started" in first
        assert re.search(r"llama-a\s+100\s+100 ms\s+990 ms", first)

        api.model_calls("llama-a", 3.0, 100)  # bucket 2.5-5, only these in the window: p50 = 2.5 + 2.5 * 50/100
        later = tmux.wait_for(r"llama-a\s+\d+\.\d\d\s+3\.75 s")
        assert re.search(r"last \d+ s \(rates per second over it\)", later)
        assert "calls/s" in later
        # Cumulative, the p50 would be 1.00 s (rank 100 of 200 tops the 0.5-1 bucket): it is the window's
        assert not re.search(r"llama-a\s+\d+\.\d\d\s+1\.00 s", later)
    finally:
        tmux.close()


# --- `orchestrion runs` and `orchestrion trace` on the real span file --------------------------------------


def write_runs(data_dir: str) -> None:
    """Run in a fresh process (the tracer provider is process-wide): two runs, the first resumed once."""
    from opentelemetry.trace import SpanKind

    from core.settings import Settings
    from observability.observations import observe
    from observability.propagation import current_traceparent
    from observability.run_trace import note_tier, run_observation
    from observability.tracing import init_tracing

    tracing = init_tracing(Settings(data_dir=Path(data_dir)), "api")

    async def tool(name: str, after_s: float, takes_s: float) -> None:
        await asyncio.sleep(after_s)
        with observe(name, as_type="tool"):
            await asyncio.sleep(takes_s)

    async def parallel_tools() -> None:  # the file has "tool quick" first: it ended first
        await asyncio.gather(tool("tool slow", 0, 0.06), tool("tool quick", 0.02, 0.01))

    def run(run_id: str, execution: int, traceparent: str | None, status: str) -> None:
        with run_observation(
            graph="orchestration", run_id=run_id, thread_id=f"thread-{run_id}", tenant="acme", metadata={},
            question="how are refunds handled?", traceparent=traceparent, execution=execution,
        ) as observed:  # fmt: skip
            if execution == 1:
                with observe("plan", as_type="chain"):
                    time.sleep(0.02)
                with (
                    observe("step retrieve", as_type="chain"),
                    observe("tool search", as_type="tool", metadata={"server": "retrieval"}),
                ):
                    time.sleep(0.05)
                with tracing.langfuse.start_as_current_observation(
                    as_type="generation", name="llm small", model="gemma-3-270m", metadata={"deployment": "local-0"}
                ) as generation:
                    started = datetime.now(UTC)
                    note_tier("small")
                    time.sleep(0.03)
                    generation.update(
                        usage_details={"input": 12, "output": 34}, cost_details={"total": 0.0001},
                        completion_start_time=started + timedelta(seconds=0.012),
                    )  # fmt: skip
            else:
                with observe("step execute", as_type="chain"):
                    try:
                        with observe("tool flaky", as_type="tool"):
                            raise RuntimeError("the tool broke")
                    except RuntimeError:
                        pass
                    asyncio.run(parallel_tools())
            if status == "error":
                observed.observation.failed("the step failed")
            observed.observation.attributes(**{"run.status": status})
            observed.finish(status, {"answer": "..."})

    with observe("POST /v1/threads/{thread_id}/runs", kind=SpanKind.SERVER):
        created = current_traceparent()
    run("run-1", 1, created, "interrupted")  # waits for an approval
    run("run-1", 2, created, "error")  # resumed: the same trace, a second root run span
    time.sleep(0.01)
    run("run-2", 1, None, "success")
    tracing.flush()
    tracing.shutdown()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("traced")
    code = f"from tests.orchestrion.test_observe_cli import write_runs; write_runs({str(data_dir)!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
    return data_dir


def _names(trace: RunTrace) -> list[tuple[str, list[str]]]:
    return [(root.name, [child.name for child in root.children]) for root in trace.roots]


def test_trace_nests_both_executions_of_a_resumed_run_under_the_request_in_start_order(traced: Path) -> None:
    found = run_trace(traced / "traces" / "spans.jsonl", "run-1")

    assert found is not None and found.executions == 2 and len(found.trace_ids) == 1
    assert _names(found) == [("POST /v1/threads/{thread_id}/runs", ["run orchestration", "run orchestration"])]
    first, resumed = found.roots[0].children
    assert [c.name for c in first.children] == ["plan", "step retrieve", "llm small"]
    assert [c.name for c in first.children[1].children] == ["tool search"]
    assert [c.name for c in resumed.children] == ["step execute"]
    written = [r["name"] for r in records(traced / "traces" / "spans.jsonl") if r["name"].startswith("tool ")]
    assert written.index("tool quick") < written.index("tool slow")  # written as they end
    assert [c.name for c in resumed.children[0].children] == ["tool flaky", "tool slow", "tool quick"]
    tool = first.children[1].children[0]
    assert tool.record["end_ns"] - tool.record["start_ns"] >= 50_000_000
    assert first.record["end_ns"] - first.record["start_ns"] >= 100_000_000  # plan + tool + model call
    assert resumed.start_ns > first.record["end_ns"]


def test_trace_command_prints_the_tree_with_durations_offsets_errors_and_the_model_call(traced: Path) -> None:
    done = _cli(traced, "trace", "run-1")

    assert done.returncode == 0, done.stderr
    tree = _tree(done.stdout)
    assert [name for _, name, _ in tree] == [
        "POST /v1/threads/{thread_id}/runs", "run orchestration", "plan", "step retrieve", "tool search",
        "llm small", "run orchestration", "step execute", "tool flaky", "tool slow", "tool quick",
    ]  # fmt: skip
    depth = [d for d, _, _ in tree]
    assert depth[0] < depth[1] < depth[2] == depth[3] == depth[5] < depth[4]  # tool search is under its step
    assert depth[6] == depth[1] and depth[7] == depth[2] and depth[8] == depth[9] == depth[10] == depth[4]
    lines = {(i, name): line for i, (_, name, line) in enumerate(tree)}
    tool = lines[4, "tool search"]
    assert "server retrieval" in tool
    assert int(re.search(r"tool search\s+(\d+)(\.\d)? ms\s+\+\d", tool).group(1)) >= 50  # type: ignore[union-attr]
    offsets = [float(re.search(r"\+([\d,.]+) ms", line).group(1).replace(",", "")) for line in lines.values()]  # type: ignore[union-attr]
    assert offsets[0] == 0 and offsets[6] > offsets[5] > offsets[4] > offsets[2]
    model = lines[5, "llm small"]
    assert "model gemma-3-270m" in model and "tokens 12 in / 34 out" in model and "deployment local-0" in model
    assert re.search(r"TTFT 1[0-9] ms", model)
    assert "✗ RuntimeError: the tool broke" in lines[8, "tool flaky"]
    assert "run run-1" in lines[1, "run orchestration"] and "interrupted" in lines[1, "run orchestration"]
    assert "✗ the step failed" in lines[6, "run orchestration"]


def _tree(output: str) -> list[tuple[int, str, str]]:
    """Each span line of a printed tree: its indentation, its span's name, the line."""
    found = []
    for line in output.splitlines()[1:]:
        label = line.lstrip("│├└─ ")
        found.append((len(line) - len(label), label.split("  ")[0], line))
    return found


def test_runs_lists_newest_first_with_the_latest_status_and_every_execution(traced: Path) -> None:
    done = _cli(traced, "runs")

    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if "run-" in line]
    assert [row.split()[1] for row in rows] == ["run-2", "run-1"]
    assert re.search(r"run-2 .* success .* 1 .* acme .* thread-run-2", rows[0])
    assert re.search(r"run-1 .* error .* 2 .* acme .* thread-run-1 .* small", rows[1])
    limited = _cli(traced, "runs", "--limit", "1")
    assert [line.split()[1] for line in limited.stdout.splitlines() if "run-" in line] == ["run-2"]


def test_trace_of_an_unknown_run_and_a_missing_file_say_so(traced: Path, tmp_path: Path) -> None:
    unknown = _cli(traced, "trace", "no-such-run")
    assert unknown.returncode == 1 and "no run 'no-such-run' in the trace file" in unknown.stderr
    missing = _cli(tmp_path, "runs")
    assert missing.returncode == 1 and f"no trace file at {tmp_path / 'traces' / 'spans.jsonl'}" in missing.stderr


def test_with_langfuse_configured_the_commands_say_where_traces_are_and_still_read_the_file(traced: Path) -> None:
    done = _cli(
        traced, "runs", LANGFUSE_PUBLIC_KEY="pk-x", LANGFUSE_SECRET_KEY="sk-x", LANGFUSE_BASE_URL="http://lf.test"
    )
    assert done.returncode == 0, done.stderr
    assert "traces are in Langfuse at http://lf.test" in done.stdout
    assert "run-2" in done.stdout
