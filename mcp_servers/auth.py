"""Bearer tokens for the HTTP transport, verified against the tenant registry."""

from __future__ import annotations

from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from pydantic import AnyHttpUrl

from core.tenancy import TenantRegistry


class RegistryTokenVerifier:
    """A token is valid when the registry maps it to a tenant; that tenant is the caller's identity."""

    def __init__(self, registry: TenantRegistry) -> None:
        self._registry = registry

    async def verify_token(self, token: str) -> AccessToken | None:
        # On the event loop: the registry answers from memory after one stat() of its file, and
        # parses the file again only after it changed (a token issued or revoked). A thread hop
        # per request cost more than that.
        tenant = self._registry.tenant_for_token(token)
        if tenant is None:
            return None
        return AccessToken(token=token, client_id=tenant, scopes=["orchestrion"])


def auth_settings(base_url: str) -> AuthSettings:
    # Orchestrion issues its own opaque tokens (`orchestrion tenants token`); the issuer
    # URL is this server, which tells clients where the protected resource lives.
    return AuthSettings(
        issuer_url=AnyHttpUrl(base_url),
        resource_server_url=AnyHttpUrl(f"{base_url}/mcp"),
        required_scopes=["orchestrion"],
        # The verifier accepts only tokens this server's registry issued, so it is the audience check: the
        # tokens carry no RFC 8707 resource indicator for the SDK to compare.
        validate_token_resource=False,
    )
