"""Assemble the MCP servers: retrieval, ingest, or all of them on one endpoint."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from langfuse import Langfuse
from mcp.server.mcpserver import MCPServer

from core.errors import ConfigurationError, OrchestrionError
from core.heap import freeze_startup_heap
from core.settings import Settings
from core.tenancy import tenant_registry
from mcp_servers.auth import RegistryTokenVerifier, auth_settings
from mcp_servers.context import ServerDeps
from mcp_servers.ingest import add_ingest_tools
from mcp_servers.ping import add_ping_tool, orchestrion_version
from mcp_servers.retrieval import add_retrieval_tools
from mcp_servers.router import add_router_tools
from rag.embedding import warm_up
from rag.services import RagServices

log = logging.getLogger(__name__)

SERVERS = ("all", "retrieval", "ingest", "router")


def build_server(
    which: str, settings: Settings, deps: ServerDeps, *, http_base_url: str | None, own_lifespan: bool
) -> MCPServer:
    """`http_base_url` set: bearer auth against the tenant registry. `own_lifespan`: the server opens
    the RAG services itself (standalone); otherwise its host (the API server) fills `deps`."""
    if which not in SERVERS:
        raise ConfigurationError(f"unknown MCP server {which!r}: choose from {', '.join(SERVERS)}")
    auth: dict[str, Any] = {}
    if http_base_url is not None:
        auth = {
            "token_verifier": RegistryTokenVerifier(tenant_registry(settings)),
            "auth": auth_settings(http_base_url),
        }

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        from observability.tracing import init_tracing
        from workers.client import open_rag_with_queue

        # Like the API server's: tool calls, their searches and model generations are traced.
        tracing = init_tracing(settings, "mcp")
        rag, _queue = await anyio.to_thread.run_sync(open_rag_with_queue, settings, True)
        deps.rag = rag
        attach_models(deps, settings, rag, tracing.langfuse)
        # In the background: a stdio client waits for `initialize`, and a search that comes
        # first simply waits for the same model start.
        threading.Thread(target=warm_up, args=(rag.embedder,), name="embedder-warm-up", daemon=True).start()
        freeze_startup_heap()
        try:
            yield
        finally:
            tracing.shutdown()  # first: a stdio client ends its server 2 s after closing its input
            rag.close()

    server: MCPServer = MCPServer(
        name=f"orchestrion-{which}" if which != "all" else "orchestrion",
        version=orchestrion_version(),
        instructions=(
            "Orchestrion knowledge tools. search_documents finds cited passages in your documents; "
            "ingest_documents adds documents (queued, idempotent); results are always your tenant's only."
        ),
        lifespan=lifespan if own_lifespan else None,
        **auth,
    )
    add_ping_tool(server)
    if which in ("all", "retrieval"):
        add_retrieval_tools(server, deps)
    if which in ("all", "ingest"):
        add_ingest_tools(server, deps, settings.rag.progress_wait_s)
    if which in ("all", "router"):
        add_router_tools(server, deps)
    return server


def attach_models(deps: ServerDeps, settings: Settings, rag: RagServices, langfuse: Langfuse | None = None) -> None:
    """The model client, when a fleet is configured; otherwise the router tools say why not."""
    from routing.services import open_models

    try:
        deps.models = open_models(settings, rag.embedder, langfuse)
    except OrchestrionError as exc:
        deps.models_error = str(exc)
        log.warning("model router unavailable: %s", exc)
