"""The caller's tenant, from its credentials and nothing else: `Authorization: Bearer <token>`, or the
`x-api-key` header that LangGraph's SDK sends; both are the tokens of the tenant registry."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from core.errors import AuthenticationError
from operations.services import Services


def services(request: Request) -> Services:
    found: Services = request.app.state.services
    return found


async def tenant(
    request: Request,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(alias="x-api-key", include_in_schema=False)] = None,
) -> str:
    # On the event loop: the registry answers from memory after one stat() of its file (see mcp_servers/auth.py).
    scheme, _, token = (authorization or "").partition(" ")
    given = token.strip() if scheme.lower() == "bearer" and token.strip() else (x_api_key or "").strip()
    if not given:
        raise AuthenticationError(
            "send `Authorization: Bearer <token>` or `x-api-key: <token>` (tokens: `orchestrion tenants token NAME`)"
        )
    found = services(request).rag.registry.tenant_for_token(given)
    if found is None:
        raise AuthenticationError("unknown or revoked token")
    return found


Svc = Annotated[Services, Depends(services)]
Tenant = Annotated[str, Depends(tenant)]
