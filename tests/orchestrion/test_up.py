"""`orchestrion up` as a user runs it: real processes, real signals, real restarts."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
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
from tests.orchestrion.stack_process import light, owned_pids, start_up, stop, up_output, wait_gone, wait_ready
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


@pytest.mark.slow
def test_full_embedded_stack_lifecycle(tmp_path: Path) -> None:
    data_dir = tmp_path / "stack"
    up = start_up(data_dir)
    try:
        record = wait_ready(up, data_dir)
        urls: dict[str, str] = record["urls"]  # type: ignore[assignment]

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
        output = up_output(data_dir)
        assert "tenant 'default' provisioned" in output and "12 document(s) ingested" in output
        assert "api-communication.md" in output  # the demo question's citation
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
        assert "already running" in second.stderr and str(record["launcher_pid"]) in second.stderr

        # State to find again after a restart.
        marker = uuid.uuid4().hex
        redis.Redis.from_url(urls["redis_url"]).set("restart-marker", marker)
        schema = {
            "class": "RestartMarker",
            "vectorizer": "none",
            "properties": [{"name": "text", "dataType": ["text"]}],
        }
        assert httpx.post(urls["weaviate_url"] + "/v1/schema", json=schema, timeout=30).status_code == 200

        children = set(record["pids"].values())  # type: ignore[union-attr]
        assert stop(up, signal.SIGTERM) == 0
        assert wait_gone(data_dir) == set(), "processes outlived `orchestrion up`"
        assert not any(Path(f"/proc/{pid}").exists() for pid in children)
        assert not (data_dir / "stack.json").exists()

        # Restart: same ports, same data.
        up = start_up(data_dir)
        again: dict[str, str] = wait_ready(up, data_dir)["urls"]  # type: ignore[assignment]
        assert again == urls
        assert redis.Redis.from_url(again["redis_url"]).get("restart-marker") == marker.encode()
        classes = httpx.get(again["weaviate_url"] + "/v1/schema", timeout=30).json()["classes"]
        assert "RestartMarker" in [c["class"] for c in classes]
        assert stop(up, signal.SIGINT) == 0  # Ctrl-C
        assert wait_gone(data_dir) == set()
    finally:
        if up.poll() is None:
            up.kill()
        print(up_output(data_dir))


@pytest.mark.slow
def test_two_data_dirs_are_two_independent_stacks(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a, b = start_up(a_dir, "--no-samples"), start_up(b_dir, "--no-samples")
    try:
        a_urls: dict[str, str] = wait_ready(a, a_dir)["urls"]  # type: ignore[assignment]
        b_urls: dict[str, str] = wait_ready(b, b_dir)["urls"]  # type: ignore[assignment]
        assert set(a_urls.values()).isdisjoint(b_urls.values())
        for urls in (a_urls, b_urls):
            assert httpx.get(urls["api_url"] + "/healthz", timeout=10).status_code == 200
        redis.Redis.from_url(a_urls["redis_url"]).set("only-in-a", "1")
        assert redis.Redis.from_url(b_urls["redis_url"]).get("only-in-a") is None
        assert stop(a) == 0
        assert httpx.get(b_urls["api_url"] + "/healthz", timeout=10).status_code == 200  # b unaffected
        assert stop(b) == 0
        assert wait_gone(a_dir) == set() and wait_gone(b_dir) == set()
    finally:
        for process in (a, b):
            if process.poll() is None:
                process.kill()


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
    assert wait_gone(data_dir) == set()  # Valkey and the worker, started before, were stopped


def test_killed_launcher_takes_its_children_with_it(tmp_path: Path, weaviate: dict[str, str]) -> None:
    data_dir = tmp_path / "killed"
    up = start_up(data_dir, "--no-samples", **light(weaviate))
    wait_ready(up, data_dir)
    assert len(owned_pids(data_dir)) >= 4  # launcher, valkey, worker (+ pool), api
    up.kill()  # SIGKILL: no handler runs, only the kernel's parent-death signal
    up.wait(10)
    assert wait_gone(data_dir, timeout=60) == set()


def test_commands_without_a_stack_say_how_to_start_one(tmp_path: Path) -> None:
    env = {**os.environ, "ORCHESTRION_DATA_DIR": str(tmp_path / "empty")}
    for command in (["mcp"], ["worker"], ["serve"], ["status"]):
        result = subprocess.run(
            [sys.executable, "-m", "orchestrion", *command], env=env, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 1, command
        assert "orchestrion up" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_help_explains_every_command() -> None:
    result = subprocess.run([sys.executable, "-m", "orchestrion"], capture_output=True, text=True, timeout=60)
    for command in ("up", "prepare", "worker", "serve", "mcp", "status", "config"):
        assert f" {command} " in result.stdout, result.stdout
