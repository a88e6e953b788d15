"""One MCP client layer for every tool the agents use.

Our own servers are connected in-process (the SDK's direct dispatch: no transport, no JSON-RPC
framing); third-party servers from the servers file over stdio or streamable HTTP, one
connection per server for the process's life, shared by all runs. A server that fails to start
or to list its tools is reported once and left out; the runs go on without its tools.

The tenant of a call to an in-process server is set with `core.tenancy.acting_as` around the
call: the SDK dispatches in the caller's task, so the tool reads exactly that tenant, and no
tenant ever travels in the request a model could have shaped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import MCPServer
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.dispatcher import ProgressFnT as Progress
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, RequestParamsMeta, Tool
from opentelemetry.trace import SpanKind

from core.errors import InvalidInputError
from core.tenancy import acting_as
from observability.observations import observe
from observability.propagation import inject_current
from tools.servers_file import ServerEntry, ToolRules

log = logging.getLogger(__name__)
LONG_RUNNING_META = "orchestrion/longRunning"


@dataclass(frozen=True)
class ToolSpec:
    """A tool as agents see it: `name` is unique in the toolbox (qualified with its server when two share one)."""

    name: str
    server: str
    remote_name: str
    description: str
    input_schema: dict[str, Any]
    in_process: bool
    long_running: bool = False
    requires_approval: bool = False
    read_only: bool = False
    timeout_s: float | None = None


@dataclass(frozen=True)
class ToolResult:
    ok: bool
    text: str
    structured: dict[str, Any] | None = None
    error: str = ""

    @classmethod
    def from_mcp(cls, result: CallToolResult) -> ToolResult:
        text = "\n".join(getattr(block, "text", "") for block in result.content if getattr(block, "text", None))
        if result.is_error:
            return cls(False, text, None, text or "the tool reported an error")
        return cls(True, text, result.structured_content)

    def public(self) -> dict[str, Any]:
        return {"ok": self.ok, "text": self.text, "structured": self.structured, "error": self.error}


@dataclass
class _Server:
    name: str
    connect: Callable[[], Client]
    in_process: bool
    rules: ToolRules | None = None
    client: Client | None = None
    tools: list[Tool] = field(default_factory=list)
    problem: str = ""
    broken: anyio.Event | None = None  # set by a call that found the connection broken


RECONNECT_FIRST_S, RECONNECT_MAX_S = 2.0, 60.0


@dataclass
class Toolbox:
    """Run `serve()` in a task for the process's life (it holds the connections); `ready()` waits until every
    server connected or failed once; `close()` ends `serve()`. A server that fails or loses its connection is
    tried again with backoff; its tools are left out meanwhile."""

    in_process: Mapping[str, MCPServer]
    external: Mapping[str, ServerEntry]
    default_timeout_s: float = 60.0
    in_process_rules: Mapping[str, ToolRules] = field(default_factory=dict)
    _servers: dict[str, _Server] = field(init=False, default_factory=dict)
    _specs: dict[str, ToolSpec] = field(init=False, default_factory=dict)
    _ready: anyio.Event | None = field(init=False, default=None)
    _closing: anyio.Event | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        for name, server in self.in_process.items():
            rules = self.in_process_rules.get(name)
            self._servers[name] = _Server(name, lambda s=server: Client(s), True, rules)  # type: ignore[misc]
        for name, entry in self.external.items():
            if name in self._servers:
                raise InvalidInputError(f"MCP server name {name!r} is taken by one of Orchestrion's own")
            self._servers[name] = _Server(name, lambda e=entry: _client_for(e), False, entry)  # type: ignore[misc]

    async def serve(self) -> None:
        ready, closing = anyio.Event(), anyio.Event()
        self._ready, self._closing = ready, closing
        waiting = set(self._servers)

        def settled(name: str) -> None:
            waiting.discard(name)
            if not waiting:
                ready.set()

        async def one(server: _Server) -> None:
            delay, reported = RECONNECT_FIRST_S, False
            while not closing.is_set():
                broken = server.broken = anyio.Event()
                try:
                    async with server.connect() as client:
                        server.tools = await _list_tools(client)
                        server.client, server.problem = client, ""
                        self._name_tools()
                        if reported:
                            log.info("MCP server %s is back, with its tools", server.name)
                        settled(server.name)
                        delay, reported = RECONNECT_FIRST_S, False
                        await _first(closing, broken)
                except Exception as exc:  # noqa: BLE001 - one server's failure must not stop the others
                    server.problem = f"{type(exc).__name__}: {exc}"[:300]
                    if not reported:  # once, clearly; the retries are quiet
                        log.warning(
                            "MCP server %s is unavailable, its tools are left out: %s", server.name, server.problem
                        )
                        reported = True
                finally:
                    server.client, server.tools = None, []
                    self._name_tools()
                    settled(server.name)
                with anyio.move_on_after(delay):
                    await closing.wait()
                delay = min(RECONNECT_MAX_S, delay * 2)

        if not waiting:
            ready.set()
        async with anyio.create_task_group() as group:
            for server in self._servers.values():
                group.start_soon(one, server)

    async def ready(self, timeout_s: float = 60.0) -> None:
        while self._ready is None:  # serve() not started yet
            await anyio.sleep(0.01)
        with anyio.move_on_after(timeout_s):
            await self._ready.wait()

    def close(self) -> None:
        if self._closing is not None:
            self._closing.set()

    @property
    def problems(self) -> dict[str, str]:
        return {s.name: s.problem for s in self._servers.values() if s.problem}

    def specs(self) -> list[ToolSpec]:
        return list(self._specs.values())

    def get(self, name: str) -> ToolSpec:
        spec = self._specs.get(name)
        if spec is None:
            raise InvalidInputError(f"no tool {name!r}: the tools are {', '.join(sorted(self._specs)) or 'none'}")
        return spec

    async def call(
        self,
        tenant: str,
        name: str,
        arguments: dict[str, Any],
        *,
        progress: Progress | None = None,
        timeout_s: float | None = None,
    ) -> ToolResult:
        """Call a tool for `tenant`. Every failure of the tool or its server is a result (ok=False), not an
        exception: a plan step that fails goes back to the planner."""
        spec = self._specs.get(name)
        if spec is None:
            return ToolResult(False, "", None, f"no tool {name!r} (its server may be disconnected)")
        server = self._servers[spec.server]
        if server.client is None:
            return ToolResult(False, "", None, f"MCP server {spec.server} is not connected: {server.problem}")
        metadata = {"server": spec.server, "remote_name": spec.remote_name, "in_process": spec.in_process}
        with observe(f"tool {name}", as_type="tool", kind=SpanKind.CLIENT, input=arguments, metadata=metadata) as span:
            result = await self._call(tenant, spec, server, arguments, progress, timeout_s)
            span.output(result.public())
            if not result.ok:
                span.failed(result.error)
            return result

    async def _call(
        self,
        tenant: str,
        spec: ToolSpec,
        server: _Server,
        arguments: dict[str, Any],
        progress: Progress | None,
        timeout_s: float | None,
    ) -> ToolResult:
        name = spec.name
        assert server.client is not None
        meta: dict[str, Any] = {}
        inject_current(meta)  # W3C trace context in the request's _meta; a server that does not read it ignores it
        scope: AbstractContextManager[None] = acting_as(tenant) if spec.in_process else nullcontext()
        timeout = timeout_s or spec.timeout_s or self.default_timeout_s
        try:
            with scope, anyio.fail_after(timeout):
                result = await server.client.call_tool(
                    spec.remote_name, arguments, progress_callback=progress, meta=cast(RequestParamsMeta, meta) or None
                )
        except TimeoutError:
            return ToolResult(False, "", None, f"{name} did not answer within {timeout:.0f} s")
        except MCPError as exc:
            return ToolResult(False, "", None, f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - the connection or the answer is broken: reconnect, fail the step
            server.problem = f"{type(exc).__name__}: {exc}"[:300]
            if server.broken is not None:
                server.broken.set()
            log.warning("MCP server %s: %s; reconnecting", spec.server, server.problem)
            return ToolResult(False, "", None, f"MCP server {spec.server} failed: {type(exc).__name__}")
        return ToolResult.from_mcp(result)

    def _name_tools(self) -> None:
        """Names that do not depend on which server connected first: our own servers' tools keep their names; a
        third-party tool whose name another server also uses is `server__tool`."""
        owners: dict[str, list[str]] = {}
        for server in self._servers.values():
            for tool in server.tools:
                owners.setdefault(tool.name, []).append(server.name)
        specs: dict[str, ToolSpec] = {}
        for server in sorted(self._servers.values(), key=lambda s: (not s.in_process, s.name)):
            for tool in server.tools:
                shared = len(owners[tool.name]) > 1
                name = tool.name if server.in_process or not shared else f"{server.name}__{tool.name}"
                specs[name] = _spec(name, server, tool)
        self._specs = specs


def _spec(name: str, server: _Server, tool: Tool) -> ToolSpec:
    rules, annotations = server.rules, tool.annotations
    task_support = tool.execution.task_support if tool.execution else None
    return ToolSpec(
        name=name,
        server=server.name,
        remote_name=tool.name,
        description=tool.description or tool.title or tool.name,
        input_schema=dict(tool.input_schema or {}),
        in_process=server.in_process,
        long_running=bool(rules and rules.is_long_running(tool.name))
        or task_support == "required"
        or bool((tool.meta or {}).get(LONG_RUNNING_META)),
        requires_approval=bool(rules and rules.needs_approval(tool.name)),
        read_only=bool(annotations and annotations.read_only_hint),
        timeout_s=rules.timeout_s if rules else None,
    )


async def _first(*events: anyio.Event) -> None:
    """Wait until any of `events` is set."""
    async with anyio.create_task_group() as group:

        async def wait(event: anyio.Event) -> None:
            await event.wait()
            group.cancel_scope.cancel()

        for event in events:
            group.start_soon(wait, event)


async def _list_tools(client: Client) -> list[Tool]:
    tools: list[Tool] = []
    cursor: str | None = None
    for _ in range(100):  # a paginator that never ends cannot hang the start
        page = await client.list_tools(cursor=cursor) if cursor else await client.list_tools()
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _client_for(entry: ServerEntry) -> Client:
    if entry.command is not None:
        params = StdioServerParameters(command=entry.command, args=entry.args, env=entry.env or None, cwd=entry.cwd)
        return Client(params)
    assert entry.url is not None
    transport = streamable_http_client(entry.url, http_client=create_mcp_http_client(headers=entry.headers))
    return Client(transport)
