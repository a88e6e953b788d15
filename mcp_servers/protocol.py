"""Protocol features of Orchestrion's MCP endpoint beyond tools: log levels, completions, stream resumability.

- `logging/setLevel`: each session's level is kept, and what Orchestrion logs to a client (`client_log`) is
  sent only at or above it (handshake-era clients; 2026-07-28 clients opt in per request, which the SDK does).
- `completion/complete`: the document template's `doc_id` completes from the caller's own documents.
- `MemoryEventStore`: SSE events kept per stream (bounded) so a client that lost its stream reconnects with
  `Last-Event-ID` and misses nothing.
"""

from __future__ import annotations

import itertools
import warnings
import weakref
from collections import OrderedDict, deque
from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp_types import (
    Completion,
    EmptyResult,
    JSONRPCMessage,
    LoggingLevel,
    ResourceTemplateReference,
    SetLevelRequestParams,
)

from core.errors import OrchestrionError
from mcp_servers.context import ServerDeps, caller_tenant
from operations import knowledge

LEVELS: tuple[LoggingLevel, ...] = ("debug", "info", "notice", "warning", "error", "critical", "alert", "emergency")
_session_levels: weakref.WeakKeyDictionary[Any, LoggingLevel] = weakref.WeakKeyDictionary()


def add_log_levels(server: MCPServer) -> None:
    async def set_level(ctx: Any, params: SetLevelRequestParams) -> EmptyResult:
        _session_levels[ctx.session] = params.level
        return EmptyResult()

    server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, set_level)


async def client_log(ctx: Context | None, level: LoggingLevel, message: str) -> None:
    """Log to the client of this request, if its session asked for this level (default: info and above)."""
    if ctx is None:
        return
    wanted = _session_levels.get(ctx.session, "info")
    if LEVELS.index(level) < LEVELS.index(wanted):
        return
    with warnings.catch_warnings():  # deprecated at 2026-07-28 only; handshake-era clients still use it
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        await ctx.log(level, message, logger_name="orchestrion")


def add_document_completions(server: MCPServer, deps: ServerDeps, extra: Any = None) -> None:
    """`extra(ref, argument)`: completions for other references (the conformance profile's prompts)."""

    @server.completion()  # type: ignore[untyped-decorator,no-untyped-call]
    async def complete(ref: Any, argument: Any, context: Any) -> Completion | None:
        if isinstance(ref, ResourceTemplateReference) and argument.name == "doc_id":
            try:
                page = await knowledge.list_documents(deps.ready(), caller_tenant(deps), 200, 0)
            except OrchestrionError:
                return Completion(values=[], total=0, has_more=False)
            values = [d.doc_id for d in page.documents if d.doc_id.startswith(argument.value)]
            return Completion(values=values[:100], total=len(values), has_more=len(values) > 100 or page.more)
        return await extra(ref, argument) if extra is not None else None


class MemoryEventStore(EventStore):
    """The last `per_stream` events of at most `streams` streams, in this process (a client reconnects to the
    process that holds its session)."""

    def __init__(self, streams: int = 1000, per_stream: int = 200) -> None:
        self._streams: OrderedDict[str, deque[tuple[str, JSONRPCMessage | None]]] = OrderedDict()
        self._where: dict[str, str] = {}
        self._ids = itertools.count(1)
        self._max_streams, self._per_stream = streams, per_stream

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(next(self._ids))
        events = self._streams.setdefault(stream_id, deque())
        self._streams.move_to_end(stream_id)
        if len(events) == self._per_stream:
            self._where.pop(events.popleft()[0], None)
        events.append((event_id, message))
        self._where[event_id] = stream_id
        while len(self._streams) > self._max_streams:
            _, dropped = self._streams.popitem(last=False)
            for old_id, _message in dropped:
                self._where.pop(old_id, None)
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream_id = self._where.get(last_event_id)
        if stream_id is None:
            return None
        after = False
        for event_id, message in list(self._streams.get(stream_id, ())):
            if after and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id
