"""Assemble the MCP servers: retrieval, ingest, router, orchestrator (`ask`), or all of them on one endpoint."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.mcpserver import MCPServer

from core.errors import ConfigurationError
from core.heap import freeze_startup_heap
from core.settings import Settings
from core.tenancy import tenant_registry
from mcp_servers.auth import RegistryTokenVerifier, auth_settings
from mcp_servers.context import ServerDeps
from mcp_servers.ingest import add_ingest_tools
from mcp_servers.orchestrator import add_document_resources, add_orchestrator_tools
from mcp_servers.ping import add_ping_tool, orchestrion_version
from mcp_servers.protocol import add_document_completions, add_log_levels
from mcp_servers.retrieval import add_retrieval_tools
from mcp_servers.router import add_router_tools
from rag.embedding import warm_up
from workers.host import HostOpener

SERVERS = ("all", "retrieval", "ingest", "router", "orchestrator")
INSTRUCTIONS = (
    "Orchestrion: ask answers a question from your documents with cited sources (planner, retriever and "
    "executor agents; follow-ups on the same thread_id see the conversation). search_documents finds cited "
    "passages; ingest_documents adds documents (queued, idempotent). Results are always your tenant's only."
)


def build_server(
    which: str,
    settings: Settings,
    deps: ServerDeps,
    *,
    http_base_url: str | None,
    open_host: HostOpener | None = None,
    for_agents: bool = False,
    extra_completions: Any = None,
) -> MCPServer:
    """`http_base_url` set: bearer auth against the tenant registry. `open_host` set: the server opens the
    process's Host itself (a standalone server); otherwise its host process (the API server, the agents'
    in-process use) fills `deps`. `for_agents`: only the tools agents call (no ping, no resources)."""
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
        assert open_host is not None
        async with open_host(settings, "mcp") as host:
            deps.services, deps.runner = host.services, host.runner
            # In the background: a stdio client waits for `initialize`, and a search that comes
            # first simply waits for the same model start.
            threading.Thread(
                target=warm_up, args=(host.services.rag.embedder,), name="embedder-warm-up", daemon=True
            ).start()
            freeze_startup_heap()
            yield

    server: MCPServer = MCPServer(
        name=f"orchestrion-{which}" if which != "all" else "orchestrion",
        version=orchestrion_version(),
        instructions=INSTRUCTIONS,
        lifespan=lifespan if open_host is not None else None,
        **auth,
    )
    if not for_agents:
        add_ping_tool(server)
        add_log_levels(server)
    if which in ("all", "retrieval"):
        add_retrieval_tools(server, deps)
        if not for_agents:
            add_document_resources(server, deps)
            add_document_completions(server, deps, extra_completions)
    if which in ("all", "ingest"):
        add_ingest_tools(server, deps, settings.rag.progress_wait_s)
    if which in ("all", "router"):
        add_router_tools(server, deps)
    if which in ("all", "orchestrator"):
        add_orchestrator_tools(server, deps)
    return server
