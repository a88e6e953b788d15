"""The HTTP server: agent API, health, metrics, and the MCP streamable-HTTP endpoint at /mcp."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import redis.asyncio as aioredis
from celery import Celery
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from fastapi.telemetry import TelemetryConfig
from prometheus_client import CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from api.agent import assistants, runs, threads
from api.agent.admission import Admission
from api.agent.deps import AgentApi
from api.agent.hub import StreamHub
from api.agent.idempotency import Idempotency
from api.documents import router as documents_router
from api.errors import install_error_handlers
from api.middleware import RequestObserver
from core.heap import freeze_startup_heap
from core.settings import Settings
from core.stack import resolve_endpoints
from mcp_servers.context import ServerDeps
from mcp_servers.http import mcp_http_app
from mcp_servers.ping import orchestrion_version
from mcp_servers.server import build_server
from observability.instruments import CircuitCollector, QueueDepthCollector
from observability.metrics import render_latest
from operations.models import fleet
from operations.services import Services
from rag.embedding import warm_up
from rag.services import RagServices
from workers.app import queue_depth
from workers.host import Host, HostOpener

log = logging.getLogger(__name__)
MCP_PATH = "/mcp"


class McpFastPath:
    """Requests to the MCP endpoint go straight to the MCP app; everything else to FastAPI.

    Mounted under FastAPI, every MCP call also went through FastAPI's middleware stack and its
    server span, about a tenth of the server's CPU per search (py-spy, bench.retrieval at one
    client). The MCP SDK's own span (`tools/call <tool>`) still traces each call, and takes a
    caller's trace context from the request's `_meta`. FastAPI keeps the lifespan, the other
    routes and the OAuth metadata routes of the MCP app, mounted under it."""

    def __init__(self, api: ASGIApp, mcp: ASGIApp, path: str) -> None:
        self.api = api
        self.mcp = RequestObserver(mcp, route_of_unrouted=path)
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.path:
            await self.mcp(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def _untraced(scope: MutableMapping[str, Any]) -> bool:
    return scope.get("path") in ("/metrics", "/healthz")


# FastAPI's own OpenTelemetry: one server span per request (the MCP SDK adds its spans under
# it). Not its per-dependency and per-endpoint spans, nor spans for scrapes and health checks:
# each span is export work on the serving process, and those carry nothing to debug with.
# Its OTel metrics are off because /metrics serves Prometheus.
TELEMETRY: TelemetryConfig = {"operation_spans": False, "metrics": False, "exclude": _untraced}


def public_url(settings: Settings) -> str:
    if settings.server.public_url:
        return settings.server.public_url.rstrip("/")
    host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
    return f"http://{host}:{settings.server.port}"


def create_app(settings: Settings, open_host: HostOpener) -> ASGIApp:
    """`open_host`: the process's composition root (orchestrion/wiring.py), opened for the app's lifetime."""
    endpoints = resolve_endpoints(settings)
    deps = ServerDeps()
    mcp = build_server("all", settings, deps, http_base_url=public_url(settings))
    mcp_app = mcp_http_app(mcp, settings, public_url(settings), MCP_PATH)
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["redis"] = aioredis.Redis.from_url(endpoints.redis_url, socket_timeout=2)
        try:
            async with open_host(settings, "api") as host:
                app.state.host, app.state.services = host, host.services
                deps.services, deps.runner = host.services, host.runner
                state["queues"] = _queue_depth_registry(settings, host.queue.app)
                # Load the embedding model before /healthz answers, so no search pays for torch's start.
                await anyio.to_thread.run_sync(warm_up, host.services.rag.embedder)
                freeze_startup_heap()
                async with anyio.create_task_group() as background, mcp.session_manager.run():
                    background.start_soon(_offload_idle_tenants, host.services.rag)
                    agent = _agent_api(settings, host)
                    if agent is not None:
                        app.state.agent_api = agent
                        background.start_soon(agent.hub.serve)
                    yield
                    background.cancel_scope.cancel()
        finally:
            await state["redis"].aclose()

    app = FastAPI(title="Orchestrion", version=orchestrion_version(), lifespan=lifespan, telemetry=TELEMETRY)
    app.add_middleware(RequestObserver)
    install_error_handlers(app)
    app.include_router(documents_router)
    for agent_routes in (assistants.router, threads.router, runs.router):
        app.include_router(agent_routes)

    @app.get("/healthz", summary="Liveness and the reachability of Redis")
    async def healthz() -> JSONResponse:
        checks = {"redis": "ok"}
        try:
            await state["redis"].ping()
        except Exception as exc:  # noqa: BLE001 - reported, not raised: this is the health check
            checks["redis"] = f"unreachable: {type(exc).__name__}"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", "checks": checks}, 200 if healthy else 503)

    @app.get("/readyz", summary="Ready to serve runs: Redis, Weaviate and a model reachable")
    async def readyz() -> JSONResponse:
        checks = await _readiness(app.state.host)
        ready = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ready" if ready else "not ready", "checks": checks}, 200 if ready else 503)

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        circuits = await _circuit_states(app.state.services)
        # In a thread: the queue-depth reads from Redis must not block the loop that serves MCP calls.
        body, content_type = await anyio.to_thread.run_sync(_render_metrics, state["queues"], circuits)
        return Response(body, media_type=content_type)

    # Last: everything FastAPI does not route (the MCP app's OAuth metadata) goes to the MCP app,
    # with its own middleware (transport security, bearer auth) intact.
    app.mount("/", mcp_app)
    return McpFastPath(app, mcp_app, MCP_PATH)


def _agent_api(settings: Settings, host: Host) -> AgentApi | None:
    runner = host.runner
    if runner is None or runner.events is None:
        return None
    redis, prefix = runner.store.redis, settings.redis.key_prefix
    return AgentApi(
        runner,
        StreamHub(runner.events, settings.runs.stream_poll_ms),
        Idempotency(redis, prefix, settings.runs.idempotency_ttl_s),
        Admission(redis, runner.store, prefix, settings.runs),
        settings.runs,
    )


async def _readiness(host: Host) -> dict[str, str]:
    """Each dependency a run needs, checked now (a few seconds at most each)."""
    checks: dict[str, str] = {}

    async def check(name: str, probe: Any) -> None:
        try:
            with anyio.fail_after(3):
                await probe()
            checks[name] = "ok"
        except Exception as exc:
            # Unauthenticated route: the detail (hosts, ports, driver messages) goes to the log only.
            log.warning("readiness: %s unreachable", name, exc_info=exc, extra={"check": name})
            checks[name] = "unreachable"

    async def redis_ping() -> None:
        await host.store.redis.client().ping()

    async def weaviate_ready() -> None:
        if not await anyio.to_thread.run_sync(host.services.rag.store.client.is_ready):
            raise ConnectionError("not ready")

    async def model_reachable() -> None:
        models = host.services.models
        if models is None:
            raise ConnectionError(host.services.models_error or "no model fleet")
        urls = [d.base_url.rstrip("/") for d in models.fleet.deployments if d.base_url]
        if not urls:
            return  # hosted providers only: not probed (a probe would be a billed call)
        async with httpx.AsyncClient(timeout=2.0) as client:
            for url in urls:
                try:
                    if (await client.get(f"{url}/models")).status_code < 500:
                        return
                except httpx.HTTPError:
                    continue
        raise ConnectionError(f"none of {len(urls)} model servers answered")

    await check("redis", redis_ping)
    await check("weaviate", weaviate_ready)
    await check("model", model_reachable)
    return checks


async def _offload_idle_tenants(rag: RagServices) -> None:
    """Every few minutes, close the files of tenants nobody used lately (see rag/activity.py).
    Every API replica runs this; setting a tenant INACTIVE twice is harmless."""
    from rag.activity import offload_idle

    idle_s = rag.settings.rag.tenant_idle_offload_s
    while idle_s:
        await anyio.sleep(rag.settings.rag.tenant_offload_check_s)
        try:
            done = await anyio.to_thread.run_sync(offload_idle, rag.store, rag.activity, idle_s)
        except Exception:
            log.warning("offloading idle tenants failed", exc_info=True)
            continue
        if done:
            log.info("offloaded %d idle tenant(s)", len(done))


async def _circuit_states(services: Services) -> dict[str, str]:
    """Each deployment's circuit from the fleet's shared state; none when the fleet is absent or unreachable
    (a scrape reports what it can rather than fail)."""
    if services.models is None:
        return {}
    try:
        with anyio.fail_after(2):
            view = await fleet(services)
    except Exception:  # logged; the rest of the scrape still answers
        log.debug("circuit states unavailable for /metrics", exc_info=True)
        return {}
    return {deployment.name: health.status for deployment, health in view.deployments}


def _render_metrics(queues: CollectorRegistry, circuits: dict[str, str]) -> tuple[bytes, str]:
    body, content_type = render_latest()
    fleet_health = CollectorRegistry()
    fleet_health.register(CircuitCollector(circuits))
    return body + generate_latest(queues) + generate_latest(fleet_health), content_type


def _queue_depth_registry(settings: Settings, celery_app: Celery) -> CollectorRegistry:
    queues = CollectorRegistry()
    queues.register(QueueDepthCollector(settings.celery.queues, lambda q: queue_depth(celery_app, q)))
    return queues
