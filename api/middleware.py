"""What every HTTP answer carries out: its metrics (by route template, so label values stay bounded) and its
trace id in `X-Trace-Id` (FastAPI's server span is the request's)."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from observability.instruments import HTTP_IN_FLIGHT, HTTP_LATENCY, HTTP_REQUESTS
from observability.propagation import current_trace_id

TRACE_HEADER = b"x-trace-id"


class RequestObserver:
    def __init__(self, app: ASGIApp, route_of_unrouted: str = "other") -> None:
        self.app = app
        self._unrouted = route_of_unrouted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        trace_id = current_trace_id()  # read now: the span is current here, not always in the send callback
        status = 499  # no answer began: the client went away (nginx's code), not a server error

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if trace_id:
                    message["headers"] = [*message.get("headers", []), (TRACE_HEADER, trace_id.encode())]
            await send(message)

        HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, observed_send)
        finally:
            HTTP_IN_FLIGHT.dec()
            route = getattr(scope.get("route"), "path", None) or self._unrouted
            method, code = scope["method"], str(status)
            HTTP_REQUESTS.labels(method, route, code).inc()
            HTTP_LATENCY.labels(method, route, code).observe(time.perf_counter() - started)
