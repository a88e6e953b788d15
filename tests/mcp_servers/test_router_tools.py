"""The router MCP tools on the real API server, answered by the real local model."""

from __future__ import annotations

from typing import Any

import anyio
from mcp import Client

from rag.services import RagServices
from tests.conftest import ApiServer
from tests.mcp_client import call, http, text_of
from tests.otlp_receiver import OtlpReceiver


def test_route_explains_without_calling_a_model(rag: RagServices, tenant: str, api_server: ApiServer) -> None:
    [simple, hinted] = call(
        http(f"{api_server.url}/mcp", rag.registry.issue_token(tenant)),
        [("route", {"text": "What is the capital of Portugal?"}), ("route", {"text": "hi", "hint": "large"})],
    )
    assert simple.structured_content is not None and hinted.structured_content is not None
    assert simple.structured_content["tier"] == "small" and simple.structured_content["stage"] == "classifier"
    assert simple.structured_content["score"] < simple.structured_content["threshold"]
    assert hinted.structured_content["tier"] == "large" and hinted.structured_content["stage"] == "hint"


def test_complete_streams_progress_and_accounts_per_tenant(
    rag: RagServices, tenant: str, api_server: ApiServer, otlp: OtlpReceiver
) -> None:
    token = rag.registry.issue_token(tenant)
    streamed: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        streamed.append(message or "")

    async def run() -> Any:
        async with Client(http(f"{api_server.url}/mcp", token)) as client:
            ask = {"messages": [{"role": "user", "content": "Say hello."}], "hint": "small", "max_tokens": 8}
            answer = await client.call_tool("complete", ask, progress_callback=on_progress)
            models = await client.call_tool("list_models", {})
            usage = await client.call_tool("get_usage", {})
            return answer, models, usage

    answer, models, usage = anyio.run(run)

    assert not answer.is_error, text_of(answer)
    result = answer.structured_content
    assert result["text"] and "".join(streamed) == result["text"]  # the answer arrived as it was generated
    assert result["decision"]["tier"] == "small" and result["ttft_s"] > 0 and result["tokens_out"] <= 8
    deployments = models.structured_content["models"]
    assert {m["tier"] for m in deployments} == {"small", "large"}
    assert all(m["health"] == "closed" for m in deployments)
    assert usage.structured_content["tiers"]["small"]["calls"] == 1
    assert usage.structured_content["total_cost_usd"] == result["cost_usd"] > 0
    [other] = call(http(f"{api_server.url}/mcp", rag.registry.issue_token(_other(rag))), [("get_usage", {})])
    assert other.structured_content == {"tiers": {}, "total_cost_usd": 0.0}  # usage is per tenant
    generation = otlp.wait_for(lambda s: s.name == "llm small" and s.service == "orchestrion-api")[0]
    assert generation.trace_id


def _other(rag: RagServices) -> str:
    import uuid

    from orchestrion.knowledge import provision

    name = f"o-{uuid.uuid4().hex[:8]}"
    provision(rag, name)
    return name
