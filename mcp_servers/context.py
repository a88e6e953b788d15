"""What every tool needs: the process's services, the caller's tenant, and errors a client can read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations

from core.errors import AuthenticationError, BusyError, OrchestrionError
from core.tenancy import acting_tenant
from operations.services import Services

# What a client (and our agents: a read-only call is safe to repeat after a crash) may know of a tool's effects.
READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)

if TYPE_CHECKING:
    from graphs.runner import Runner


@dataclass
class ServerDeps:
    """Filled in by the process's composition root once it has opened the services; tools read it per call.

    `local_tenant` is set only for stdio, where the caller is the local user; over HTTP the tenant
    comes from the verified bearer token, and for our own in-process calls from `core.tenancy.acting_as`.
    """

    services: Services | None = None
    runner: Runner | None = None
    local_tenant: str | None = None

    def ready(self) -> Services:
        if self.services is None:
            raise OrchestrionError("the server is still starting; retry in a moment")
        return self.services

    def runs(self) -> Runner:
        if self.runner is None:
            raise OrchestrionError("agent runs are not served by this server")
        return self.runner


def caller_tenant(deps: ServerDeps) -> str:
    acting = acting_tenant()
    if acting is not None:
        return acting
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
