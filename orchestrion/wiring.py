"""The composition root: what one Orchestrion process opens at start and closes at exit.

Every serving process (the API server, a standalone MCP server, each worker process) opens exactly
one Host here: tracing, the queue producer, the RAG services, the model client, Orchestrion's own
MCP servers for the agents to call in-process, the toolbox (those and the servers file's), the
checkpointer, the run store and the runner. The adapters below receive it; none builds its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from mcp.server.mcpserver import MCPServer

from agents.deps import routed_deps
from core.errors import OrchestrionError
from core.settings import Settings
from core.stack import resolve_endpoints
from graphs.checkpointer import open_checkpointer
from graphs.events import RunEvents
from graphs.runner import Runner
from graphs.runs import RunStore
from mcp_servers.context import ServerDeps
from mcp_servers.server import build_server
from observability.tracing import Tracing, init_tracing
from operations.services import Services
from rag.services import open_rag
from routing.redis_loop import LoopRedis
from tools.long_calls import LongCalls
from tools.servers_file import load_servers
from tools.toolbox import Toolbox
from workers.client import QueueClient
from workers.host import Host

log = logging.getLogger(__name__)
SERVING_ROLES = ("api", "mcp")  # these embed queries in a model child process (rag/model_process.py)


@asynccontextmanager
async def open_host(
    settings: Settings, role: str, *, tracing: Tracing | None = None, recover_runs: bool = True
) -> AsyncIterator[Host]:
    """`tracing`: the process's own, when it made one already (a worker's pool process)."""
    own_tracing = tracing is None
    tracing = tracing or init_tracing(settings, role)
    redis_url = resolve_endpoints(settings).redis_url
    queue = QueueClient(settings, redis_url)
    servers = load_servers(settings)  # a bad servers file stops the process now, not a run later
    rag = await anyio.to_thread.run_sync(
        lambda: open_rag(settings, enqueue=queue.enqueue_ingest, serving=role in SERVING_ROLES)
    )
    try:
        services = Services(settings, rag)
        _attach_models(services, tracing)
        tool_deps = ServerDeps(services=services)
        in_process: dict[str, MCPServer] = {
            name: build_server(name, settings, tool_deps, http_base_url=None, for_agents=True)
            for name in settings.agents.in_process_servers
        }
        toolbox = Toolbox(in_process, servers, settings.agents.tool_timeout_s)
        redis = LoopRedis(redis_url)
        prefix, ttl = settings.redis.key_prefix, settings.agents.record_ttl_s
        long_calls = LongCalls(redis, prefix, queue.send_tool_call, ttl)
        recovery = anyio.CancelScope()
        async with open_checkpointer(settings) as checkpointer, anyio.create_task_group() as group:
            group.start_soon(toolbox.serve)
            store = RunStore(redis, prefix, ttl)
            host = Host(settings, services, queue, toolbox, store, long_calls=long_calls)
            if services.models is not None:
                deps = routed_deps(services.models, toolbox, settings.agents, long_calls)
                events = RunEvents(redis, prefix, settings.runs.events_ttl_s)

                async def dispatch(tenant: str, run_id: str) -> None:
                    await anyio.to_thread.run_sync(queue.send_run, tenant, run_id)

                runner = host.runner = Runner(deps, store, checkpointer, settings.agents, dispatch, events)
                runner.queued_grace_s = settings.celery.visibility_timeout_s
                if recover_runs:

                    async def recover() -> None:
                        with recovery:
                            await runner.recover_forever()

                    group.start_soon(recover)
            else:
                host.runs_error = services.models_error
            try:
                yield host
            finally:
                recovery.cancel()
                toolbox.close()  # its connections close in serve(); a server that hangs on exit is cut off
                group.cancel_scope.deadline = anyio.current_time() + 10
        await redis.aclose()
    finally:
        rag.close()
        if own_tracing:
            tracing.shutdown()


def _attach_models(services: Services, tracing: Tracing) -> None:
    """The model client, when a fleet is configured; otherwise the router tools and runs say why not."""
    from routing.services import open_models

    try:
        services.models = open_models(services.settings, services.rag.embedder, tracing.langfuse)
    except OrchestrionError as exc:
        services.models_error = str(exc)
        log.warning("model router unavailable: %s", exc)


def worker_host(settings: Settings, role: str) -> AbstractAsyncContextManager[Host]:
    """A worker pool process's Host: the process's tracing is the task tracer's (workers/instrumentation.py)."""
    from workers.instrumentation import process_tracing

    return open_host(settings, role, tracing=process_tracing())
