"""One `ask` is one Langfuse trace across every boundary it crosses, as the real Langfuse SDK exports it.

Four real processes, each exporting with the Langfuse SDK (keys set, so the SDK's own OTLP exporter posts to
`/api/public/otel/v1/traces` of the local receiver): the HTTP API (`orchestrion serve`'s app, its runs executed
in-process on a scripted planner and the real local model for the answer), a standalone MCP server over HTTP
(`orchestrion mcp retrieval --http`), a Celery worker that runs the long tool, and the stdio effect server (a
third-party server: it gets the trace context and ignores it). The plan: a search through the in-process MCP
server, a search through the HTTP one, a long tool on the `tools` queue, then the answer, streamed.
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrion.launcher import services
from orchestrion.launcher.supervisor import launch
from tests.conftest import CONSOLE, free_port, settings_from, start_worker
from tests.graphs.harness import answer, plan, retrieve, tool
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.rag.helpers import GUIDE, ingest_text

EFFECT_SERVER = Path(__file__).parents[1] / "graphs" / "effect_server.py"
LANGFUSE_SECRET = f"sk-lf-{uuid.uuid4().hex}"
GENERATION = "generation"


@dataclass(frozen=True)
class Asked:
    run: dict[str, Any]
    trace_id: str
    header_trace_id: str
    first_token_ns: int
    events: list[str]
    secrets: list[str]
    metrics: dict[str, str]  # process -> its /metrics text, scraped once the run ended


@pytest.fixture(scope="module")
def asked(
    stack_env: dict[str, str], local_llm: str, otlp: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Asked]:
    from orchestrion.knowledge import provision
    from tests.conftest import agent_env
    from workers.client import open_rag_with_queue

    home = tmp_path_factory.mktemp("trace")
    logs = home / "logs"
    env = {
        **stack_env,
        **agent_env(local_llm),
        "ORCHESTRION_DATA_DIR": str(home / "data"),
        "ORCHESTRION_REDIS__KEY_PREFIX": f"{stack_env['ORCHESTRION_REDIS__KEY_PREFIX']}-trace",
        "LANGFUSE_PUBLIC_KEY": "pk-lf-orchestrion-test",
        "LANGFUSE_SECRET_KEY": LANGFUSE_SECRET,
        "LANGFUSE_BASE_URL": otlp.url,
    }
    env.pop("ORCHESTRION_LANGFUSE__OTLP_ENDPOINT", None)
    started: list[Any] = []
    rag, _queue = open_rag_with_queue(settings_from(env))
    try:
        worker, handle = start_worker({**env, "ORCHESTRION_AGENTS__SERVERS_FILE": _servers(home, None, "")}, logs)
        started.append(worker)
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        provision(rag, tenant)
        ingest_text(rag, tenant, GUIDE, doc_id="payments")
        token = rag.registry.issue_token(tenant)

        mcp_port = free_port()
        mcp_url = f"http://127.0.0.1:{mcp_port}"
        started.append(launch(services.ServiceSpec(
            name="mcp-retrieval",
            argv=[sys.executable, "-m", "orchestrion", "mcp", "retrieval", "--http", "--port", str(mcp_port)],
            env=env, healthy=services.http_ok(f"{mcp_url}/metrics"), start_timeout_s=240.0,
        ), logs, CONSOLE))  # fmt: skip

        script = home / "script.json"
        script.write_text(json.dumps({
            "plan": plan(
                retrieve("s1", "idempotency key retries"),
                tool("s2", "kb__search_documents", {"query": "card charged once"}),
                tool("s3", "slow_effect", {"label": "traced", "seconds": 1}),
                answer("s4", "s1", "s2", "s3"),
            ),
            "real": ["answer"],
        }))  # fmt: skip
        api_port = free_port()
        api_url = f"http://127.0.0.1:{api_port}"
        api_env = {**env, "ORCHESTRION_AGENTS__SERVERS_FILE": _servers(home, mcp_url, token)}
        started.append(launch(services.ServiceSpec(
            name="api-traced",
            argv=[sys.executable, "-m", "tests.graphs.run_host", "serve", str(script), str(api_port)],
            env=api_env, healthy=services.http_ok(f"{api_url}/healthz"), start_timeout_s=240.0,
        ), logs, CONSOLE))  # fmt: skip

        run, header_trace_id, first_token_ns, events = _stream_one_run(api_url, token)
        scraped = {
            name: httpx.get(url, timeout=30).text
            for name, url in [
                ("api", f"{api_url}/metrics"),
                ("mcp", f"{mcp_url}/metrics"),
                ("worker", handle.metrics_url),
            ]
        }
        yield Asked(run, run["trace_id"], header_trace_id, first_token_ns, events, [token, LANGFUSE_SECRET],
                    scraped)  # fmt: skip
    finally:
        for process in reversed(started):
            process.stop()
        rag.close()


def _servers(home: Path, mcp_url: str | None, token: str) -> str:
    servers: dict[str, Any] = {
        "effects": {"command": sys.executable, "args": [str(EFFECT_SERVER)], "long_running": ["slow_effect"],
                    "env": {"EFFECTS_FILE": str(home / "effects.log")}}
    }  # fmt: skip
    if mcp_url:
        servers["kb"] = {"url": f"{mcp_url}/mcp", "headers": {"Authorization": f"Bearer {token}"}}
    path = home / f"servers-{len(servers)}.json"
    path.write_text(json.dumps({"mcpServers": servers}))
    return str(path)


def _stream_one_run(api_url: str, token: str) -> tuple[dict[str, Any], str, int, list[str]]:
    """Streams a run with the SDK's `messages-tuple` mode; notes when the first token arrived (wall clock, as
    span times are)."""
    headers = {"x-api-key": token}
    with httpx.Client(base_url=api_url, headers=headers, timeout=300) as client:
        thread = client.post("/threads", json={}).json()["thread_id"]
        body = {"input": {"question": "How is a card charged only once when a client retries?"},
                "stream_mode": ["messages-tuple", "custom"], "metadata": {"user_id": "alice"}}  # fmt: skip
        first_token_ns, events = 0, []
        with client.stream("POST", f"/threads/{thread}/runs/stream", json=body) as response:
            assert response.status_code == 200, response.read()
            header_trace_id = response.headers.get("x-trace-id", "")
            event = ""
            for line in response.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                    events.append(event)
                elif line.startswith("data: ") and event.startswith("messages") and not first_token_ns:
                    chunk, meta = json.loads(line[6:])
                    if meta.get("langgraph_node") == "answer" and chunk.get("content"):
                        first_token_ns = time.time_ns()  # the answer's first token (the planner streams too)
        run_id = client.get(f"/threads/{thread}/runs").json()[0]["run_id"]
        run = client.get(f"/threads/{thread}/runs/{run_id}").json()
        run["thread_id"] = thread
    return run, header_trace_id, first_token_ns, events


def _trace(otlp: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    """Every span of the trace, once the worker's, the MCP server's and the API's batches have all arrived."""
    deadline = time.monotonic() + 60
    names = {"run orchestration", "task orchestrion.tools.call", "retrieval", "tool slow_effect"}
    while time.monotonic() < deadline:
        spans = [s for s in otlp.spans if s.trace_id == trace_id]
        if names <= {s.name for s in spans} and sum(s.name == "retrieval" for s in spans) >= 2:
            time.sleep(2)  # the last batches of each process
            return [s for s in otlp.spans if s.trace_id == trace_id]
        time.sleep(0.5)
    raise AssertionError(f"incomplete trace: {sorted({s.name for s in otlp.spans if s.trace_id == trace_id})}")


def _one(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, f"{len(found)} spans {name!r} in\n{_tree(spans)}"
    return found[0]


def _tree(spans: list[ReceivedSpan]) -> str:
    """The trace as an indented outline, for failure messages."""
    children: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(spans, key=lambda s: s.start_ns):
        children.setdefault(span.parent_span_id, []).append(span)
    lines: list[str] = []

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            failed = " FAILED " + str(span.attributes.get("langfuse.observation.status_message", ""))[:200]
            lines.append(f"{'  ' * depth}{span.name} [{span.service}]{failed if span.status_code == 2 else ''}")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[str]:
    names = []
    while span.parent_span_id and span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def test_one_ask_is_one_trace_with_no_orphans_across_api_mcp_celery_and_the_model(
    asked: Asked, otlp: OtlpReceiver
) -> None:
    assert asked.run["status"] == "success", asked.run
    assert asked.header_trace_id == asked.trace_id  # the caller is told which trace to open
    spans = _trace(otlp, asked.trace_id)
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, [(s.name, s.service) for s in roots]
    orphans = [(s.name, s.service) for s in spans if s.parent_span_id and s.parent_span_id not in by_id]
    assert not orphans
    # Sent by the SDK's exporter, with its keys: this is what Langfuse itself would receive.
    assert {s.path for s in spans} == {"/api/public/otel/v1/traces"}
    assert {s.service for s in spans} >= {"orchestrion-api", "orchestrion-mcp", "orchestrion-worker"}

    run = _one(spans, "run orchestration")
    assert run.service == "orchestrion-api"
    for node in ("plan", "gather", "answer"):
        assert run.name in _ancestors(_one(spans, node), by_id)
    # In-process MCP: the client's tool span holds the server's tools/call span, which holds the retrieval.
    local, remote = sorted((s for s in spans if s.name == "retrieval"), key=lambda s: s.service)
    assert _ancestors(local, by_id)[:3] == ["tools/call search_documents", "tool search_documents", "step retrieve"]
    # HTTP MCP: the server process's span sits under the client's tool span of the API process.
    assert remote.service == "orchestrion-mcp"
    remote_chain = _ancestors(remote, by_id)
    assert remote_chain[:3] == [
        "tools/call search_documents", "MCP send tools/call search_documents", "tool kb__search_documents"
    ]  # fmt: skip
    assert by_id[remote.parent_span_id].service == "orchestrion-mcp"
    assert remote.attributes["rag.hits"] >= 1 and local.attributes["rag.hits"] >= 1
    # Celery: the run's tool span, the producer's send span under it, the worker's task under that, and the
    # worker's own call of the tool under the task.
    task = _one(spans, "task orchestrion.tools.call")
    assert task.service == "orchestrion-worker"
    send = by_id[task.parent_span_id]
    assert send.name == "send orchestrion.tools.call" and send.service == "orchestrion-api" and send.kind == 4
    assert _ancestors(send, by_id)[:2] == ["tool slow_effect", "step tool"]
    [worker_call] = [s for s in spans if s.name == "tool slow_effect" and s.service == "orchestrion-worker"]
    assert "task orchestrion.tools.call" in _ancestors(worker_call, by_id)
    assert worker_call.duration_ms >= 1000  # the tool's one second of work happened there
    assert task.start_ns >= send.end_ns  # the gap is the time in the queue


def test_the_trace_names_the_graph_thread_and_user_and_holds_the_runs_input_and_output(
    asked: Asked, otlp: OtlpReceiver
) -> None:
    run = _one(_trace(otlp, asked.trace_id), "run orchestration")
    attrs = run.attributes
    assert attrs["langfuse.trace.name"] == "orchestration"
    assert attrs["session.id"] == asked.run["thread_id"]
    assert attrs["user.id"].endswith(":alice")  # tenant:user_id: the caller's id labels, the tenant decides
    assert attrs["langfuse.observation.type"] == "agent"
    tags = attrs["langfuse.trace.tags"]
    assert "orchestration" in tags and any(t.startswith("tier:") for t in tags), tags
    assert "card charged only once" in attrs["langfuse.observation.input"]
    output = json.loads(attrs["langfuse.observation.output"])
    assert output["status"] == "success" and output["answer"] and output["citations"], output
    assert output["usage"]["steps"] == 3 and output["usage"]["tool_calls"] == 2


def test_the_answers_generation_has_usage_cost_routing_and_a_completion_start_at_the_first_streamed_token(
    asked: Asked, otlp: OtlpReceiver
) -> None:
    spans = _trace(otlp, asked.trace_id)
    by_id = {s.span_id: s for s in spans}
    [generation] = [
        s for s in spans if s.attributes.get("langfuse.observation.type") == GENERATION and "answer" in
        _ancestors(s, by_id)
    ]  # fmt: skip
    attrs = generation.attributes
    usage = json.loads(attrs["langfuse.observation.usage_details"])
    assert usage["input"] > 0 and usage["output"] > 0
    assert "langfuse.observation.cost_details" in attrs
    assert json.loads(attrs["langfuse.observation.metadata.routing"])
    assert attrs["langfuse.observation.model.name"]
    assert attrs["langfuse.observation.metadata.deployment"]
    # TTFT: the completion start is when the first token came, not when the call ended (the pitfall of
    # buffered streaming). The client saw its first token before the generation ended, and not before the
    # recorded completion start (one host, one clock; 50 ms for the SSE hop's rounding).
    start_ns = _iso_ns(json.loads(attrs["langfuse.observation.completion_start_time"]))
    assert generation.start_ns < start_ns < generation.end_ns
    assert asked.first_token_ns, asked.events
    assert start_ns - 50_000_000 <= asked.first_token_ns < generation.end_ns


def test_no_span_holds_a_token_or_key(asked: Asked, otlp: OtlpReceiver) -> None:
    # The bearer token went to the HTTP MCP server in a header and to the API in x-api-key; neither it nor
    # the Langfuse secret may show in any span of any process.
    dumped = json.dumps([[s.name, s.attributes, s.events] for s in _trace(otlp, asked.trace_id)], default=str)
    for secret in asked.secrets:
        assert secret not in dumped
    assert "Bearer " not in dumped


def _iso_ns(value: str) -> int:
    from datetime import datetime

    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return int(moment.timestamp() * 1e9)


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}  # fmt: skip


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum over the series of `name` whose labels include `labels` (absent: 0)."""
    wanted = set(labels.items())
    return sum(v for (n, have), v in samples.items() if n == name and wanted <= have)


def test_the_same_run_is_in_each_processs_metrics_by_the_catalogues_names(asked: Asked) -> None:
    api, mcp, worker = (_samples(asked.metrics[p]) for p in ("api", "mcp", "worker"))
    stream_route = {"route": "/threads/{thread_id}/runs/stream", "status": "200"}
    assert _value(api, "orchestrion_http_request_duration_seconds_count", method="POST", **stream_route) == 1
    assert _value(api, "orchestrion_http_in_flight") == 1  # the scrape itself
    assert _value(api, "orchestrion_sse_streams_active") == 0  # the stream ended
    assert _value(api, "orchestrion_run_duration_seconds_count", graph="orchestration", outcome="success") == 1
    assert _value(api, "orchestrion_run_steps_sum", graph="orchestration", outcome="success") == 3
    tier = {"tier": "large"}
    assert _value(api, "orchestrion_model_ttft_seconds_count", **tier) >= 1
    assert _value(api, "orchestrion_model_latency_seconds_count", **tier) >= 1
    assert _value(api, "orchestrion_model_tokens_total", direction="out", **tier) > 1
    assert _value(api, "orchestrion_model_tokens_per_second_count", **tier) >= 1
    assert ("orchestrion_model_circuit_open", frozenset()) not in api  # per deployment, read from Redis
    assert any(n == "orchestrion_model_circuit_open" for n, _ in api)
    assert any(n == "orchestrion_model_cost_usd_total" for n, _ in api)
    assert _value(api, "orchestrion_queue_depth", queue="tools") == 0
    # The standalone MCP server answered the search over HTTP, and says so on its own /metrics.
    assert _value(mcp, "orchestrion_http_requests_total", route="/mcp", status="200") >= 1
    # The worker ran the long tool: its wait in the queue and its run time, by task and queue.
    task = {"task": "orchestrion.tools.call", "queue": "tools"}
    assert _value(worker, "orchestrion_celery_task_wait_seconds_count", **task) == 1
    assert _value(worker, "orchestrion_celery_task_duration_seconds_sum", **task) >= 1.0
    assert _value(worker, "orchestrion_celery_tasks_total", task="orchestrion.tools.call", state="SUCCESS") == 1
