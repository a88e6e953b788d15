"""Deliberate errors become clear JSON answers; anything else is logged with its trace id and masked."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from core.errors import (
    AuthenticationError,
    BusyError,
    EmbeddingMismatchError,
    IdempotencyKeyReusedError,
    InvalidInputError,
    NotFoundError,
    OrchestrionError,
)
from observability.propagation import current_trace_id

log = logging.getLogger(__name__)
STATUS = {
    IdempotencyKeyReusedError: 422,  # before its base class: the first match wins
    InvalidInputError: 400,
    AuthenticationError: 401,
    NotFoundError: 404,
    EmbeddingMismatchError: 409,
    BusyError: 429,
}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OrchestrionError)
    async def deliberate(_: Request, exc: OrchestrionError) -> JSONResponse:
        status = next((code for kind, code in STATUS.items() if isinstance(exc, kind)), 503)
        headers = {}
        if isinstance(exc, BusyError):
            headers["Retry-After"] = str(exc.retry_after_s)
        if isinstance(exc, AuthenticationError):
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return JSONResponse({"error": "invalid request: " + "; ".join(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        trace_id = current_trace_id()
        log.exception("unhandled error on %s %s", request.method, request.url.path, extra={"trace_id": trace_id})
        return JSONResponse({"error": "internal error", "trace_id": trace_id}, status_code=500)
