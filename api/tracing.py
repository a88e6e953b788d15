"""Every HTTP API answer names its trace: the `X-Trace-Id` header (FastAPI's server span is the request's)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability.propagation import current_trace_id

TRACE_HEADER = b"x-trace-id"


class TraceIdHeader:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        trace_id = current_trace_id()  # read now: the span is current here, not always in the send callback

        async def with_trace_id(message: Message) -> None:
            if message["type"] == "http.response.start" and trace_id:
                message["headers"] = [*message.get("headers", []), (TRACE_HEADER, trace_id.encode())]
            await send(message)

        await self.app(scope, receive, with_trace_id)
