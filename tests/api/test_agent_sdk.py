"""The agent API through LangGraph's own client (`langgraph_sdk`, unchanged) and `RemoteGraph`, against a real
`orchestrion serve` whose runs execute on a real Celery worker with the real local model."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import pytest
from langgraph.pregel.remote import RemoteGraph
from langgraph_sdk import get_client

from rag.services import RagServices
from tests.conftest import ApiServer
from tests.rag.helpers import GUIDE, ingest_text

pytestmark = pytest.mark.anyio
QUESTION = "How do idempotency keys stop duplicate payments?"


@pytest.fixture
def agent_tenant(rag: RagServices, tenant: str) -> tuple[str, str]:
    """A tenant with the payments guide ingested, and its API token."""
    ingest_text(rag, tenant, GUIDE, filename="guide.md")
    return tenant, rag.registry.issue_token(tenant)


def _client(api: ApiServer, token: str) -> Any:
    return get_client(url=api.url, api_key=token)


async def test_stream_a_run_with_values_updates_and_tokens(
    agent_tenant: tuple[str, str], api_server: ApiServer
) -> None:
    _, token = agent_tenant
    client = _client(api_server, token)
    thread = await client.threads.create(metadata={"purpose": "test"})
    assert thread["status"] == "idle" and thread["metadata"] == {"purpose": "test"}

    parts = [
        part
        async for part in client.runs.stream(
            thread["thread_id"],
            "orchestration",
            input={"question": QUESTION},
            stream_mode=["values", "updates", "messages-tuple"],
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end", events
    run_id = parts[0].data["run_id"]
    assert {"values", "updates", "messages"} <= set(events), events
    tokens = [p.data for p in parts if p.event == "messages"]
    assert len(tokens) > 3 and all(len(t) == 2 and t[0]["type"] in ("AIMessageChunk", "ai") for t in tokens)
    final = [p.data for p in parts if p.event == "values"][-1]
    assert final["answer"] and final["citations"], final
    assert "".join(str(t[0]["content"]) for t in tokens if t[1].get("langgraph_node") == "answer").strip()

    run = await client.runs.get(thread["thread_id"], run_id)
    assert run["status"] == "success"
    state = await client.threads.get_state(thread["thread_id"])
    assert state["values"]["answer"] == final["answer"] and state["next"] == []
    assert state["checkpoint"]["thread_id"] == thread["thread_id"]
    history = await client.threads.get_history(thread["thread_id"], limit=50)
    assert len(history) > 3 and history[0]["checkpoint"] == state["checkpoint"]
    shown = await client.threads.get(thread["thread_id"])
    assert shown["status"] == "idle" and shown["values"]["answer"] == final["answer"]


async def test_stream_langchain_events_beside_values(agent_tenant: tuple[str, str], api_server: ApiServer) -> None:
    _, token = agent_tenant
    client = _client(api_server, token)
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "orchestration", input={"question": QUESTION}, stream_mode=["events", "values"]
        )
    ]
    kinds = {p.data["event"] for p in parts if p.event == "events"}
    assert {"on_chain_start", "on_chat_model_stream", "on_chain_end"} <= kinds, kinds
    assert [p.data for p in parts if p.event == "values"][-1]["answer"]
    raw = str([p.data for p in parts])
    assert "/" + thread["thread_id"] not in raw  # the checkpointer's tenant/thread id never leaves


async def test_wait_join_and_background_runs(agent_tenant: tuple[str, str], api_server: ApiServer) -> None:
    _, token = agent_tenant
    client = _client(api_server, token)
    thread = await client.threads.create()
    waited = await client.runs.wait(thread["thread_id"], "orchestration", input={"question": QUESTION})
    assert waited["answer"] and waited["citations"]

    started = await client.runs.create(thread["thread_id"], "orchestration", input={"question": "What is a 409?"})
    assert started["status"] in ("pending", "running")
    streamed = [p async for p in client.runs.join_stream(thread["thread_id"], started["run_id"])]
    assert streamed[-1].event == "end" and any(p.event == "values" for p in streamed)
    joined = await client.runs.join(thread["thread_id"], started["run_id"])
    assert joined["answer"]
    runs = await client.runs.list(thread["thread_id"])
    assert runs[0]["run_id"] == started["run_id"] and len(runs) == 2

    stateless = await client.runs.wait(None, "orchestration", input={"question": QUESTION})
    assert stateless["answer"]


async def test_remote_graph_invoke_and_stream(agent_tenant: tuple[str, str], api_server: ApiServer) -> None:
    _, token = agent_tenant
    remote = RemoteGraph("orchestration", url=api_server.url, api_key=token)
    drawn = await remote.aget_graph()
    assert {"plan", "answer"} <= set(drawn.nodes)
    thread = await _client(api_server, token).threads.create()
    config: Any = {"configurable": {"thread_id": thread["thread_id"]}}
    result = await remote.ainvoke({"question": QUESTION}, config)
    assert result["answer"]
    chunks = [c async for c in remote.astream({"question": "And a 409?"}, config, stream_mode="updates")]
    assert any("answer" in c for c in chunks), chunks


async def test_another_tenants_ids_are_not_found(
    agent_tenant: tuple[str, str], rag: RagServices, api_server: ApiServer
) -> None:
    _, token = agent_tenant
    owner = _client(api_server, token)
    thread = await owner.threads.create()
    run = await owner.runs.create(thread["thread_id"], "orchestration", input={"question": QUESTION})
    await owner.runs.join(thread["thread_id"], run["run_id"])

    other_tenant = f"t-{uuid.uuid4().hex[:10]}"
    from orchestrion.knowledge import provision

    provision(rag, other_tenant)
    headers = {"x-api-key": rag.registry.issue_token(other_tenant)}
    t, r = thread["thread_id"], run["run_id"]
    probes = [
        ("GET", f"/threads/{t}", None),
        ("PATCH", f"/threads/{t}", {"metadata": {"x": 1}}),
        ("DELETE", f"/threads/{t}", None),
        ("GET", f"/threads/{t}/state", None),
        ("POST", f"/threads/{t}/state", {"values": {"question": "x"}}),
        ("POST", f"/threads/{t}/history", {"limit": 5}),
        ("POST", f"/threads/{t}/copy", None),
        ("GET", f"/threads/{t}/runs", None),
        ("POST", f"/threads/{t}/runs", {"assistant_id": "orchestration", "input": {"question": "x"}}),
        ("POST", f"/threads/{t}/runs/wait", {"assistant_id": "orchestration", "input": {"question": "x"}}),
        ("POST", f"/threads/{t}/runs/stream", {"assistant_id": "orchestration", "input": {"question": "x"}}),
        ("GET", f"/threads/{t}/runs/{r}", None),
        ("GET", f"/threads/{t}/runs/{r}/join", None),
        ("GET", f"/threads/{t}/runs/{r}/stream", None),
        ("POST", f"/threads/{t}/runs/{r}/cancel", None),
        ("DELETE", f"/threads/{t}/runs/{r}", None),
    ]
    async with httpx.AsyncClient(base_url=api_server.url, headers=headers, timeout=30) as http:
        for method, path, body in probes:
            response = await http.request(method, path, json=body)
            assert response.status_code == 404, (method, path, response.status_code, response.text)
            assert t not in response.text.replace(path, "") or "no thread" in response.json()["message"]
            assert response.json()["code"] == "not_found"
        searched = (await http.post("/threads/search", json={"ids": [t]})).json()
        assert searched == []
    still = await owner.threads.get(thread["thread_id"])
    assert still["metadata"] == {}


async def test_errors_have_one_shape(agent_tenant: tuple[str, str], api_server: ApiServer) -> None:
    _, token = agent_tenant
    async with httpx.AsyncClient(base_url=api_server.url, timeout=30) as http:
        unauthenticated = await http.post("/threads", json={})
        assert unauthenticated.status_code == 401
        assert set(unauthenticated.json()) == {"code", "message", "details", "trace_id"}
        headers = {"x-api-key": token}
        bad = await http.post(
            "/threads/nope/runs", headers=headers, json={"assistant_id": "orchestration", "stream_mode": "bogus"}
        )
        assert bad.status_code == 422 and "stream_mode" in bad.json()["message"]
        unknown = await http.get("/assistants/other", headers=headers)
        assert unknown.status_code == 404 and "orchestration" in unknown.json()["message"]
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"redis": "ok", "weaviate": "ok", "model": "ok"}
    await asyncio.sleep(0)
