"""`orchestrion up` as a user runs it: real processes, real signals, real restarts."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from core.settings import Settings
from tests.mcp_client import http
from tests.orchestrion.stack_process import (
    UpRun,
    light,
    owned_pids,
    start_up,
    stop,
    up_output,
    wait_gone,
    wait_ready,
)
from workers.app import create_celery_app


def _mcp_ping(server: Any, message: str) -> dict[str, Any]:
    async def call() -> dict[str, Any]:
        async with Client(server) as client:
            tools = await client.list_tools()
            assert "ping" in [t.name for t in tools.tools]
            result = await client.call_tool("ping", {"message": message})
            assert not result.is_error, result
            return dict(result.structured_content or {})

    return anyio.run(call)


def _mcp_search(server: Any, query: str) -> list[dict[str, Any]]:
    async def call() -> list[dict[str, Any]]:
        async with Client(server) as client:
            result = await client.call_tool("search_documents", {"query": query, "k": 3})
            assert not result.is_error, result
            return list((result.structured_content or {})["hits"])

    return anyio.run(call)


@pytest.fixture(scope="module")
def shared_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpRun]:
    run = UpRun(tmp_path_factory.mktemp("up") / "stack")
    yield run
    run.close()


@pytest.fixture
def full_stack(shared_up: UpRun) -> UpRun:
    """A full embedded stack, the sample corpus ingested on its first run. Starting one is the slowest
    thing in the suite, so the tests that only look at a running stack share it; a test that stops it
    leaves it to the next test that needs it to start it again, whatever the order."""
    if not shared_up.running():
        shared_up.start()
    return shared_up


@pytest.mark.slow
def test_full_embedded_stack_serves_every_part(full_stack: UpRun) -> None:
    data_dir, urls = full_stack.data_dir, full_stack.urls
    try:
        # Every service answers its own health check.
        health = httpx.get(urls["api_url"] + "/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["checks"]["redis"] == "ok"
        assert httpx.get(urls["weaviate_url"] + "/v1/.well-known/ready", timeout=10).status_code == 200
        models = httpx.get(urls["llm_base_url"] + "/models", timeout=10).json()
        assert models["data"], models
        metrics = httpx.get(urls["api_url"] + "/metrics", timeout=10).text
        assert 'orchestrion_queue_depth{queue="default"} 0.0' in metrics
        assert "orchestrion_http_requests_total" in metrics
        assert "orchestrion_queue_depth" in httpx.get(urls["worker_metrics_url"], timeout=10).text

        # The main job: the default tenant holds the sample corpus and a cited search was shown.
        output = full_stack.first_output
        assert "tenant 'default' provisioned" in output and "12 document(s) ingested" in output
        assert "api-communication.md" in output  # the demo question's citation
        asked = output[output.index("The agents, asked over MCP") :]
        assert "api-communication.md" in asked and "plan: fixed" in asked  # the agents' answer, cited
        token = (data_dir / "local-token").read_text().strip()

        # The MCP endpoint, over HTTP (bearer token) and over stdio (finds this stack by data dir).
        assert _mcp_ping(http(urls["mcp_url"], token), "over http")["echo"] == "over http"
        assert httpx.post(urls["mcp_url"], json={}, timeout=10).status_code == 401
        stdio = StdioServerParameters(
            command=sys.executable,
            args=["-m", "orchestrion", "mcp"],
            env={**os.environ, "ORCHESTRION_DATA_DIR": str(data_dir)},
        )
        assert _mcp_ping(stdio, "over stdio")["echo"] == "over stdio"

        # The stack's own worker runs tasks.
        settings = Settings(data_dir=data_dir, redis={"url": urls["redis_url"]})
        app = create_celery_app(settings, urls["redis_url"])
        assert app.send_task("orchestrion.ping", args=[{"x": 1}]).get(timeout=30)["echo"] == {"x": 1}

        # A second `up` on the same data dir refuses, naming the first.
        second = subprocess.run(
            [sys.executable, "-m", "orchestrion", "up"],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "ORCHESTRION_DATA_DIR": str(data_dir)},
        )
        assert second.returncode == 1
        assert "already running" in second.stderr and str(full_stack.record["launcher_pid"]) in second.stderr
    finally:
        print(full_stack.first_output)


def _cli(data_dir: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """Run `orchestrion ARGS` against the stack of `data_dir`: (exit code, stdout, stderr)."""
    env = {**os.environ, "ORCHESTRION_DATA_DIR": str(data_dir), "COLUMNS": "250", **env}
    done = subprocess.run(
        [sys.executable, "-m", "orchestrion", *args], capture_output=True, text=True, timeout=300, env=env
    )
    return done.returncode, done.stdout, done.stderr


def _searches_served(api_url: str) -> float:
    metrics = httpx.get(api_url + "/metrics", timeout=10).text
    served = r'orchestrion_http_requests_total\{method="POST",route="/v1/search",status="200"\} (\S+)'
    found = re.search(served, metrics)
    return float(found.group(1)) if found else 0.0


@pytest.mark.slow
def test_terminal_commands_provision_ingest_and_search(full_stack: UpRun, tmp_path: Path) -> None:
    data_dir, urls = full_stack.data_dir, full_stack.urls
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    assert _cli(data_dir, "tenants", "add", tenant)[::2] == (0, f"tenant {tenant!r} created\n")
    code, token, _ = _cli(data_dir, "tenants", "token", tenant, "--label", "cli test")
    token = token.strip()
    assert code == 0 and token.startswith("orch_")
    listed = _cli(data_dir, "tenants", "list")[2]
    [fingerprint] = re.findall(rf"^{tenant}: 1 token\(s\) (\S+) \(cli test\)$", listed, re.MULTILINE)

    doc = tmp_path / "okapi.md"
    doc.write_text("# Okapi\n\nThe okapi is a giraffid of the Ituri rainforest, with legs striped like a zebra's.\n")
    code, _, out = _cli(data_dir, "ingest", str(doc), "--tenant", tenant, "--tag", "fauna")
    assert code == 0 and "1 document(s) ingested: 1 chunks written, 0 unchanged" in out, out

    # A folder: each file's doc id is its path under it, so two README.md files are two documents.
    for part, animal in (("a", "The quokka smiles on Rottnest Island."), ("b", "The axolotl regrows its limbs.")):
        (tmp_path / "docs" / part).mkdir(parents=True)
        (tmp_path / "docs" / part / "README.md").write_text(f"# {part}\n\n{animal}\n")
    code, _, out = _cli(data_dir, "ingest", str(tmp_path / "docs"), "--tenant", tenant)
    assert code == 0 and "2 document(s) ingested: 2 chunks written" in out, out

    # Another tenant than the default: searched in this process, with the tenant's own filter.
    code, _, out = _cli(data_dir, "search", "giraffid with striped legs", "--tenant", tenant, "--tag", "fauna")
    assert code == 0 and "okapi.md #0" in out and "Okapi" in out, out
    code, _, out = _cli(data_dir, "search", "regrows its limbs", "--tenant", tenant, "--mode", "keyword", "--k", "1")
    assert code == 0 and "b/README.md #0" in out, out
    # Made the default by settings: the local token is still the first default's, so not through the API.
    before = _searches_served(urls["api_url"])
    code, _, out = _cli(data_dir, "search", "giraffid with striped legs", ORCHESTRION_TENANTS__DEFAULT=tenant)
    assert code == 0 and "okapi.md #0" in out, out
    assert _searches_served(urls["api_url"]) == before
    assert "no results" in _cli(data_dir, "search", "giraffid with striped legs", "--tenant", tenant, "--tag", "x")[2]

    # The default tenant: answered by the running API (its model loaded), and it has no okapi.
    before = _searches_served(urls["api_url"])
    code, _, out = _cli(data_dir, "search", "what is backpressure", "--k", "2")
    assert code == 0 and "message-queues.md" in out and "okapi" not in out, out
    assert _searches_served(urls["api_url"]) == before + 1

    # The agents, from the terminal: an answer from the default tenant's documents, then a follow-up.
    code, _, out = _cli(data_dir, "ask", "What is backpressure?")
    assert code == 0 and "message-queues.md" in out and "plan: fixed" in out, out
    thread = re.search(r"thread ([0-9a-f-]{36})", out)
    assert thread is not None, out
    code, _, out = _cli(data_dir, "ask", "And what happens when the queue is full?", "--thread", thread.group(1))
    assert code == 0 and f"thread {thread.group(1)}" in out.replace("\n", " "), out
    code, _, out = _cli(data_dir, "ask", "x", "--thread", "no-such-thread")
    assert code == 1 and out.startswith("error:") and "no thread 'no-such-thread'" in out, out

    # The token issued on the terminal is that tenant's over MCP, until revoked.
    hits = _mcp_search(http(urls["mcp_url"], token), "giraffid with striped legs")
    assert hits[0]["doc_id"] == "okapi.md"
    assert {h["doc_id"] for h in hits} <= {"okapi.md", "a/README.md", "b/README.md"}  # this tenant's only
    assert _cli(data_dir, "tenants", "revoke", fingerprint)[0] == 0
    assert httpx.post(urls["mcp_url"], json={}, headers={"Authorization": f"Bearer {token}"}).status_code == 401

    # Bad input: one clear line, no traceback.
    code, _, out = _cli(data_dir, "search", "x", "--mode", "fuzzy")
    assert code == 2 and out.startswith("error: invalid input: mode: Input should be"), out
    code, _, out = _cli(data_dir, "ingest", str(tmp_path / "missing.md"), "--tenant", tenant)
    assert code != 0 and out.startswith("error:") and "missing.md" in out and "Traceback" not in out, out

    assert _cli(data_dir, "tenants", "remove", tenant)[0] == 1  # asks for --yes
    assert _cli(data_dir, "tenants", "remove", tenant, "--yes")[::2] == (0, f"tenant {tenant!r} removed\n")
    assert tenant not in _cli(data_dir, "tenants", "list")[2]


@pytest.mark.slow
def test_two_data_dirs_are_two_independent_stacks_and_a_killed_launcher_takes_only_its_own(
    full_stack: UpRun, tmp_path: Path
) -> None:
    # The shared stack is one of the two: a second full stack, every service its own, starts beside it.
    a_dir, a_urls, a_pids = full_stack.data_dir, full_stack.urls, full_stack.pids
    b_dir = tmp_path / "b"
    b = start_up(b_dir, "--no-samples")
    try:
        b_record: dict[str, Any] = wait_ready(b, b_dir)
        b_urls: dict[str, str] = b_record["urls"]
        assert set(a_urls.values()).isdisjoint(b_urls.values())
        for urls in (a_urls, b_urls):
            assert httpx.get(urls["api_url"] + "/healthz", timeout=10).status_code == 200
        only_in_b = f"only-in-b-{uuid.uuid4().hex}"
        redis.Redis.from_url(b_urls["redis_url"]).set(only_in_b, "1")
        assert redis.Redis.from_url(a_urls["redis_url"]).get(only_in_b) is None

        # SIGKILL: no handler runs, only the kernel's parent-death signal reaches b's services.
        b_services = {int(pid) for pid in b_record["pids"].values()}
        assert b_services <= owned_pids(b_dir)  # so "gone" below is about all of them
        b.kill()
        b.wait(10)
        assert wait_gone(b_dir, timeout=60) == set(), "the killed launcher's services outlived it"
        assert a_pids <= owned_pids(a_dir), "killing one stack's launcher stopped part of the other"
        assert httpx.get(a_urls["api_url"] + "/healthz", timeout=10).status_code == 200  # a unaffected
    finally:
        if b.poll() is None:
            b.kill()
        print(up_output(b_dir))


@pytest.mark.slow
def test_stopped_stack_leaves_nothing_running_and_restarts_with_its_ports_and_data(full_stack: UpRun) -> None:
    data_dir, urls = full_stack.data_dir, full_stack.urls
    assert full_stack.process is not None
    try:
        # State to find again after a restart.
        marker = uuid.uuid4().hex
        redis.Redis.from_url(urls["redis_url"]).set("restart-marker", marker)
        schema = {
            "class": f"RestartMarker{marker}",
            "vectorizer": "none",
            "properties": [{"name": "text", "dataType": ["text"]}],
        }
        assert httpx.post(urls["weaviate_url"] + "/v1/schema", json=schema, timeout=30).status_code == 200

        started = full_stack.pids
        assert stop(full_stack.process, signal.SIGTERM) == 0
        assert wait_gone(data_dir) == set(), "processes outlived `orchestrion up`"
        assert not any(Path(f"/proc/{pid}").exists() for pid in started)
        assert not (data_dir / "stack.json").exists()

        # Restart: same ports, same data.
        full_stack.start()
        again = full_stack.urls
        assert again == urls
        assert redis.Redis.from_url(again["redis_url"]).get("restart-marker") == marker.encode()
        classes = httpx.get(again["weaviate_url"] + "/v1/schema", timeout=30).json()["classes"]
        assert f"RestartMarker{marker}" in [c["class"] for c in classes]
        assert stop(full_stack.process, signal.SIGINT) == 0  # Ctrl-C
        assert wait_gone(data_dir) == set()
    finally:
        print(up_output(data_dir))


def test_busy_port_is_one_clear_error_and_nothing_is_left_running(tmp_path: Path, weaviate: dict[str, str]) -> None:
    data_dir = tmp_path / "busy"
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        up = start_up(data_dir, **light(weaviate), ORCHESTRION_SERVER__PORT=str(port))
        assert up.wait(120) == 1
    output = up_output(data_dir)
    assert f"port {port} for api is in use" in output
    assert "ORCHESTRION_SERVER__PORT" in output
    assert "Traceback" not in output
    assert wait_gone(data_dir) == set()  # Valkey, started before, was stopped


def test_commands_without_a_stack_say_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "ORCHESTRION_DATA_DIR": str(tmp_path / "empty")}
    # Side by side; each looks for the stack before its slow imports.
    running = {
        command: subprocess.Popen(
            [sys.executable, "-m", "orchestrion", command],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in ("mcp", "worker", "serve", "status")
    }
    try:
        errors = {command: process.communicate(timeout=60)[1] for command, process in running.items()}
    finally:
        for process in running.values():
            process.kill()
    for command, stderr in errors.items():
        assert running[command].returncode == 1, command
        assert "orchestrion up" in " ".join(stderr.split()), stderr  # the console wraps lines at 80 columns
        assert "Traceback" not in stderr
        assert "[red]" not in stderr  # styled, not printed as markup
        if command != "status":
            assert stderr.startswith("error: no redis url is configured"), stderr


def test_help_explains_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "orchestrion"], capture_output=True, text=True, timeout=60)
    for command in ("up", "prepare", "worker", "serve", "mcp", "status", "config"):
        assert f" {command} " in result.stdout, result.stdout
