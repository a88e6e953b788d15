"""The `orchestrion` command. Heavy imports stay inside commands: `--help` is instant."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from core.errors import OrchestrionError
from core.settings import Settings, describe_validation_error, get_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True)

app = typer.Typer(
    name="orchestrion",
    help="Orchestrion: multi-agent orchestration over MCP, with its whole stack embedded for one laptop.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _clear_errors(command: F) -> F:
    """Deliberate errors and bad settings become one readable line and a non-zero exit, not a traceback."""

    @wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValidationError as exc:
            console.print(Text.assemble(("error:", "red"), f" {_invalid(exc)}"), soft_wrap=True, highlight=False)
            raise typer.Exit(2) from None
        except OrchestrionError as exc:
            # The reason is shown as written (it may hold brackets); only the prefix is styled.
            console.print(Text.assemble(("error:", "red"), f" {exc}"), soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None

    return run  # type: ignore[return-value]


def _invalid(error: ValidationError) -> str:
    """Bad settings name the variables that set them; a bad argument (a search's mode) names the argument."""
    if error.title == Settings.__name__:
        return describe_validation_error(error)
    problems = []
    for item in error.errors():
        given = item.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
        problems.append(f"{'.'.join(str(p) for p in item['loc'])}: {item['msg']}{shown}")
    return "invalid input: " + "; ".join(problems)


def _settings() -> Settings:
    return get_settings()


@app.command()
@_clear_errors
def up(
    exit_when_ready: Annotated[
        bool, typer.Option("--exit-when-ready", help="Start everything, check health, print, then stop (smoke test).")
    ] = False,
    samples: Annotated[
        bool, typer.Option("--samples/--no-samples", help="Ingest the sample corpus when the default tenant is empty.")
    ] = True,
) -> None:
    """Start the embedded stack: Valkey, Weaviate, a local LLM, a Celery worker, the API and MCP endpoint.

    Each part given by URL in settings (REDIS_URL, WEAVIATE_URL, OPENAI_BASE_URL, ...) is used
    instead of started. Runs until Ctrl-C or SIGTERM, then stops everything it started.
    """
    from orchestrion.launcher.supervisor import Stack

    Stack(_settings(), console).run(exit_when_ready=exit_when_ready, samples=samples)


@app.command()
@_clear_errors
def prepare() -> None:
    """Build or assemble what the embedded stack needs (weaviate-server, the local model) without starting it."""
    from orchestrion.launcher import artifacts

    settings = _settings()
    if not settings.weaviate.url:
        console.print(f"weaviate-server: {artifacts.weaviate_binary(settings, console)}")
    if not settings.models.local_llm_url and not settings.models.provider_configured:
        console.print(f"local model: {artifacts.local_model(settings, console)}")


@app.command()
@_clear_errors
def worker(
    queues: Annotated[
        str | None, typer.Option(help="Comma-separated queues (default: all of ingest,tools,runs,default).")
    ] = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Pool processes (default: settings).")] = None,
    hostname: Annotated[str | None, typer.Option(help="Celery node name (default: orchestrion@HOST).")] = None,
) -> None:
    """Run a Celery worker against the stack of this data dir or REDIS_URL."""
    from core.stack import resolve_endpoints

    settings = _settings()
    resolve_endpoints(settings).redis_url  # noqa: B018 - before the slow imports: no stack is said at once
    from observability.logs import configure_logging
    from orchestrion.wiring import worker_host
    from workers.runner import default_hostname, run_worker

    configure_logging("worker", settings.log_level, settings.server.log_format)
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else settings.celery.queues
    run_worker(
        settings, chosen, concurrency or settings.celery.concurrency, hostname or default_hostname(), worker_host
    )


@app.command()
@_clear_errors
def serve(
    port: Annotated[int | None, typer.Option(help="Port (default: ORCHESTRION_SERVER__PORT).")] = None,
) -> None:
    """Run the HTTP server: agent API, /healthz, /metrics and the MCP endpoint at /mcp."""
    from core.stack import resolve_endpoints

    settings = _settings()
    resolve_endpoints(settings).redis_url  # noqa: B018 - before the slow imports: no stack is said at once
    import uvicorn

    from api.app import create_app
    from observability.logs import configure_logging
    from orchestrion.wiring import open_host

    configure_logging("api", settings.log_level, settings.server.log_format)
    uvicorn.run(
        create_app(settings, open_host),
        host=settings.server.host,
        port=port or settings.server.port,
        backlog=settings.server.backlog,
        log_config=None,
        access_log=False,
        loop="uvloop",  # uvicorn's production choices: the event loop and HTTP parsing in C
        http="httptools",
    )


@app.command("mcp")
@_clear_errors
def mcp_command(
    server: Annotated[
        str,
        typer.Argument(
            help="Which MCP server: all, retrieval, ingest, router, orchestrator (ask), or conformance (the "
            "official suite's test profile: --http, loopback only)."
        ),
    ] = "all",
    http: Annotated[
        bool, typer.Option("--http", help="Serve streamable HTTP (bearer tokens) instead of stdio.")
    ] = False,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: ORCHESTRION_SERVER__MCP_PORT).")] = None,
) -> None:
    """Run an MCP server over stdio (Claude Desktop; the local default tenant) or streamable HTTP (IDEs)."""
    from core.stack import resolve_endpoints

    settings = _settings()
    resolve_endpoints(settings).redis_url  # noqa: B018 - before the slow imports: no stack is said at once
    import anyio

    from mcp_servers.context import ServerDeps
    from mcp_servers.http import serve_mcp_http
    from mcp_servers.server import build_server
    from observability.logs import configure_logging
    from orchestrion.wiring import open_host

    configure_logging("mcp", settings.log_level, settings.server.log_format)  # stderr: stdout is the protocol
    if server == "conformance":
        _serve_conformance(settings, port, http)
        return
    if http:
        chosen = port or settings.server.mcp_port
        host = "127.0.0.1" if settings.server.host in ("0.0.0.0", "::") else settings.server.host
        base = settings.server.public_url or f"http://{host}:{chosen}"
        mcp = build_server(server, settings, ServerDeps(), http_base_url=base, open_host=open_host)
        anyio.run(serve_mcp_http, mcp, settings, base, chosen)
    else:
        deps = ServerDeps(local_tenant=settings.tenants.default)
        mcp = build_server(server, settings, deps, http_base_url=None, open_host=open_host)
        anyio.run(mcp.run_stdio_async)


def _serve_conformance(settings: Settings, port: int | None, http: bool) -> None:
    """The conformance profile: loopback only, no auth, the local default tenant (mcp_servers/conformance.py)."""
    import anyio

    from core.errors import InvalidInputError
    from mcp_servers.conformance import conformance_server
    from mcp_servers.context import ServerDeps
    from mcp_servers.protocol import MemoryEventStore
    from orchestrion.wiring import open_host

    if not http:
        raise InvalidInputError("the conformance profile is served over HTTP: `orchestrion mcp conformance --http`")
    deps = ServerDeps(local_tenant=settings.tenants.default)
    # Only this profile's own calls: it does not take over other processes' orphaned runs.
    mcp = conformance_server(settings, deps, lambda s, role: open_host(s, role, recover_runs=False))
    chosen = port or settings.server.mcp_port
    anyio.run(
        lambda: mcp.run_streamable_http_async(
            host="127.0.0.1", port=chosen, event_store=MemoryEventStore(), retry_interval=500
        )
    )


@app.command()
@_clear_errors
def status() -> None:
    """Show whether a stack runs for this data dir, where its services are, and their health."""
    import httpx

    from core.stack import StackRecord

    settings = _settings()
    record = StackRecord.read(settings.data_dir)
    if record is None:
        console.print(f"no stack is running for data dir {settings.data_dir}; start one with `orchestrion up`")
        raise typer.Exit(1)
    print(json.dumps({"launcher_pid": record.launcher_pid, "urls": record.urls, "pids": record.pids}, indent=2))
    health = httpx.get(record.urls["api_url"] + "/healthz", timeout=5)
    console.print(f"API health: {health.status_code} {health.text}")


@app.command()
@_clear_errors
def config() -> None:
    """Print the effective settings (secrets hidden) as JSON."""
    print(json.dumps(_settings().redacted(), indent=2))


def main() -> None:
    import orchestrion.cli_knowledge
    import orchestrion.cli_observe
    import orchestrion.cli_routing  # noqa: F401 - likewise

    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
