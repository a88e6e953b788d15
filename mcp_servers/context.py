"""What every tool needs: the services, the caller's tenant, and errors a client can read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver.exceptions import ToolError

from core.errors import AuthenticationError, BusyError, OrchestrionError
from rag.services import RagServices
from routing.client import ModelClient


@dataclass
class ServerDeps:
    """Filled in by the adapter's lifespan; tools read it per call.

    `local_tenant` is set only for stdio, where the caller is the local user; over
    HTTP the tenant comes from the verified bearer token and nowhere else.
    """

    rag: RagServices | None = None
    local_tenant: str | None = None
    models: ModelClient | None = None
    models_error: str = ""

    def services(self) -> RagServices:
        if self.rag is None:
            raise OrchestrionError("the server is still starting; retry in a moment")
        return self.rag


def caller_tenant(deps: ServerDeps) -> str:
    token = get_access_token()
    if token is not None:
        return token.client_id
    if deps.local_tenant is not None:
        return deps.local_tenant
    raise AuthenticationError("no credentials: send a bearer token")


@contextmanager
def client_errors() -> Iterator[None]:
    """Deliberate errors reach the client as their message; the SDK masks everything else."""
    try:
        yield
    except BusyError as exc:
        raise ToolError(f"{exc} (retry_after_s={exc.retry_after_s})") from exc
    except OrchestrionError as exc:
        raise ToolError(str(exc)) from exc
