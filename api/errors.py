"""One JSON error shape for every route: {code, message, details, trace_id}.

Deliberate errors say what is wrong; anything else is logged with its trace id and answered as an internal
error, naming nothing of the server's internals.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import (
    AuthenticationError,
    BusyError,
    ConflictError,
    EmbeddingMismatchError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    NotFoundError,
    OrchestrionError,
)
from observability.instruments import HTTP_REJECTIONS
from observability.propagation import current_trace_id

log = logging.getLogger(__name__)
# (status, code) per kind of deliberate error; the first match wins, so subclasses come first.
STATUS: dict[type[OrchestrionError], tuple[int, str]] = {
    IdempotencyKeyReusedError: (422, "idempotency_key_reused"),
    InvalidInputError: (400, "invalid_input"),
    AuthenticationError: (401, "unauthenticated"),
    NotFoundError: (404, "not_found"),
    ConflictError: (409, "conflict"),
    EmbeddingMismatchError: (409, "embedding_mismatch"),
    BusyError: (429, "busy"),
}
HTTP_CODES = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
    429: "busy",
}


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details, "trace_id": current_trace_id()}


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message, details), status_code=status, headers=headers)


def deliberate_status(exc: OrchestrionError) -> tuple[int, str]:
    return next((sc for kind, sc in STATUS.items() if isinstance(exc, kind)), (503, "unavailable"))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OrchestrionError)
    async def deliberate(_: Request, exc: OrchestrionError) -> JSONResponse:
        status, code = deliberate_status(exc)
        headers = {}
        details: Any = None
        if isinstance(exc, BusyError):
            HTTP_REJECTIONS.labels(exc.reason).inc()
            headers["Retry-After"] = str(exc.retry_after_s)
            details = {"retry_after_s": exc.retry_after_s}
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = "Bearer"
        return error_response(status, code, str(exc), details, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [{"field": ".".join(str(p) for p in e["loc"]), "problem": e["msg"]} for e in exc.errors()]
        message = "invalid request: " + "; ".join(f"{p['field']}: {p['problem']}" for p in problems)
        return error_response(422, "invalid_request", message, problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(
            exc.status_code, HTTP_CODES.get(exc.status_code, "error"), str(exc.detail), headers=dict(exc.headers or {})
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace_id = current_trace_id()
        log.exception("unhandled error on %s %s", request.method, request.url.path, extra={"trace_id": trace_id})
        return error_response(500, "internal", f"internal error; trace id {trace_id}")
