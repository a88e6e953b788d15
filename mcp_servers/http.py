"""The MCP streamable-HTTP app as Orchestrion serves it: Host and Origin checked on every interface, and a
request without a valid token answered in the project's one error shape."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_body
from core.settings import Settings

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
UNAUTHENTICATED = (
    "send `Authorization: Bearer <token>` with a valid token (tokens: `orchestrion tenants token NAME`); "
    "the one given is missing, unknown or revoked"
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def transport_security(settings: Settings, base_url: str) -> TransportSecuritySettings:
    """DNS-rebinding protection, built here rather than left to the SDK: the SDK turns it off on any interface
    but loopback, so a server bound to 0.0.0.0 (compose) would answer a page of any origin that resolved its
    name to this host. Allowed: loopback, the public URL, and server.allowed_hosts / allowed_origins."""
    public = urlsplit(base_url)
    hosts = [*LOOPBACK, *(f"{h}:*" for h in LOOPBACK), public.netloc]
    origins = [f"http://{h}:*" for h in LOOPBACK] + [f"http://{h}" for h in LOOPBACK]
    origins.append(f"{public.scheme}://{public.netloc}")
    if public.port is None and public.scheme in _DEFAULT_PORTS:  # a client may spell the default port out
        default = _DEFAULT_PORTS[public.scheme]
        hosts.append(f"{public.netloc}:{default}")
        origins.append(f"{public.scheme}://{public.netloc}:{default}")
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[*hosts, *settings.server.allowed_hosts],
        allowed_origins=[*origins, *settings.server.allowed_origins],
    )


def mcp_http_app(mcp: MCPServer, settings: Settings, base_url: str, path: str = "/mcp") -> ASGIApp:
    """The streamable-HTTP app of a server built with `http_base_url=base_url` (bearer auth)."""
    app = mcp.streamable_http_app(streamable_http_path=path, transport_security=transport_security(settings, base_url))
    return UnauthenticatedShape(app)


async def serve_mcp_http(mcp: MCPServer, settings: Settings, base_url: str, port: int) -> None:
    """A standalone MCP HTTP server (`orchestrion mcp --http`) on settings.server.host."""
    import uvicorn

    from api.middleware import RequestObserver

    config = uvicorn.Config(
        WithMetrics(RequestObserver(mcp_http_app(mcp, settings, base_url), route_of_unrouted="/mcp")),
        host=settings.server.host,
        port=port,
        log_level=settings.log_level.lower(),
    )
    await uvicorn.Server(config).serve()


class WithMetrics:
    """`GET /metrics` (Prometheus text, unauthenticated like the API's: bind it to a private interface) beside
    the MCP app of a standalone server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await self.app(scope, receive, send)
            return
        from observability.metrics import render_latest

        body, content_type = render_latest()
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class UnauthenticatedShape:
    """The SDK's bearer auth answers 401 with an OAuth body of its own; clients of Orchestrion get the one
    error shape of every route instead. Its WWW-Authenticate header, which MCP clients follow to the
    protected-resource metadata, is kept."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []  # other scopes (lifespan) pass: they send no http.response.start

        async def shaped(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                held.append(message)
                return
            if not held:
                await send(message)
                return
            if len(held) == 1:  # the SDK's body: replaced, once, whatever its chunks
                body = json.dumps(error_body("unauthenticated", UNAUTHENTICATED)).encode()
                kept = [(k, v) for k, v in held[0]["headers"] if k.lower() not in (b"content-length", b"content-type")]
                headers = [*kept, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                await send({**held[0], "headers": headers})
                await send({"type": "http.response.body", "body": body})
                held.append(message)

        await self.app(scope, receive, shaped)
