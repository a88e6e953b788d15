"""Assistants: Orchestrion serves one graph, `orchestration`, as one assistant shared by every tenant (its
id is the graph's name or a stable uuid). Assistants are not created or changed through the API."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from api.agent.deps import Agent
from api.agent.schemas import AssistantSearch
from api.agent.views import ASSISTANT_ID, assistant_view, json_response
from api.auth import Tenant
from core.errors import NotFoundError
from graphs.orchestration import GRAPH_NAME

router = APIRouter(tags=["assistants"])


def resolve_assistant(assistant_id: str) -> str:
    if assistant_id not in (GRAPH_NAME, ASSISTANT_ID):
        raise NotFoundError(f"no assistant {assistant_id!r}: this server has one, {GRAPH_NAME!r} ({ASSISTANT_ID})")
    return ASSISTANT_ID


@router.get("/assistants/{assistant_id}", summary="An assistant, by graph name or id")
async def get_assistant(assistant_id: str, _: Tenant) -> Response:
    resolve_assistant(assistant_id)
    return json_response(assistant_view())


@router.post("/assistants/search", summary="Assistants matching graph id, name or metadata")
async def search_assistants(body: AssistantSearch, _: Tenant) -> Response:
    view = assistant_view()
    matches = (
        body.graph_id in (None, GRAPH_NAME)
        and body.name in (None, GRAPH_NAME)
        and all(view["metadata"].get(k) == v for k, v in (body.metadata or {}).items())
    )
    found = [view] if matches and body.offset == 0 else []
    return json_response(found[: body.limit])


@router.post("/assistants/count", summary="How many assistants match")
async def count_assistants(body: AssistantSearch, _: Tenant) -> Response:
    return json_response(1 if body.graph_id in (None, GRAPH_NAME) and body.name in (None, GRAPH_NAME) else 0)


@router.get("/assistants/{assistant_id}/graph", summary="The assistant's graph: nodes and edges")
async def get_graph(assistant_id: str, agent: Agent, _: Tenant, xray: int | bool = False) -> Response:
    resolve_assistant(assistant_id)
    drawn: dict[str, Any] = agent.runner.graph.get_graph(xray=xray).to_json()
    # Exactly these edge fields: RemoteGraph builds its edges from them.
    edges = [
        {
            "source": e["source"],
            "target": e["target"],
            "data": e.get("data"),
            "conditional": bool(e.get("conditional", False)),
        }
        for e in drawn.get("edges", [])
    ]
    return json_response({"nodes": drawn.get("nodes", []), "edges": edges})


@router.get("/assistants/{assistant_id}/schemas", summary="JSON schemas of the graph's input, output and state")
async def get_schemas(assistant_id: str, agent: Agent, _: Tenant) -> Response:
    resolve_assistant(assistant_id)
    graph = agent.runner.graph
    return json_response(
        {
            "graph_id": GRAPH_NAME,
            "input_schema": graph.get_input_jsonschema(),
            "output_schema": graph.get_output_jsonschema(),
            "state_schema": graph.get_output_jsonschema(),
            "config_schema": {},
            "context_schema": graph.get_context_jsonschema(),
        }
    )


@router.get("/assistants/{assistant_id}/subgraphs", summary="The assistant's subgraphs (it has none)")
async def get_subgraphs(assistant_id: str, _: Tenant) -> Response:
    resolve_assistant(assistant_id)
    return json_response({})
