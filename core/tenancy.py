"""Tenants and the bearer tokens that identify them.

A caller's tenant comes only from its credentials: a token looked up here, or for
local callers (stdio MCP, the CLI) the configured default tenant. Tokens are stored
as SHA-256 digests, so the registry file never holds a usable secret.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import InvalidInputError, NotFoundError
from core.settings import Settings

TENANT_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
TOKEN_PREFIX = "orch_"


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise InvalidInputError(
            f"invalid tenant name {name!r}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter"
        )
    return name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    tenant: str
    label: str
    created_at: float
    fingerprint: str  # first 12 hex digits of the digest: names a token without revealing it


class TenantRegistry:
    """The tenants and tokens file, safe for several processes (flock + atomic replace)."""

    def __init__(self, path: Path, static_tokens: Mapping[str, str] | None = None) -> None:
        self.path = path
        self._static = {_digest(t): tenant for t, tenant in (static_tokens or {}).items()}
        self._cache: tuple[float, dict[str, Any]] | None = None

    def tenants(self) -> list[str]:
        return sorted(self._read()["tenants"])

    def has_tenant(self, name: str) -> bool:
        return name in self._read()["tenants"]

    def add_tenant(self, name: str) -> bool:
        """Record a tenant; False when it already existed."""
        check_tenant_name(name)
        with self._writing() as data:
            if name in data["tenants"]:
                return False
            data["tenants"][name] = {"created_at": time.time()}
            return True

    def remove_tenant(self, name: str) -> None:
        with self._writing() as data:
            if data["tenants"].pop(name, None) is None:
                raise NotFoundError(f"no tenant {name!r}")
            data["tokens"] = {d: t for d, t in data["tokens"].items() if t["tenant"] != name}

    def revoke_all(self, name: str) -> int:
        """Revoke every token of a tenant (the first step of removing it: its access ends before its data)."""
        with self._writing() as data:
            kept = {d: t for d, t in data["tokens"].items() if t["tenant"] != name}
            revoked = len(data["tokens"]) - len(kept)
            data["tokens"] = kept
        return revoked

    def issue_token(self, tenant: str, label: str = "") -> str:
        """A new token for `tenant`; it is shown once and stored only as a digest."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._writing() as data:
            if tenant not in data["tenants"]:
                raise NotFoundError(f"no tenant {tenant!r}: create it with `orchestrion tenants add {tenant}`")
            data["tokens"][_digest(token)] = {"tenant": tenant, "label": label, "created_at": time.time()}
        return token

    def revoke(self, fingerprint: str) -> TokenInfo:
        if len(fingerprint) < 6:
            raise InvalidInputError("give at least 6 characters of the token's fingerprint")
        with self._writing() as data:
            matches = [d for d in data["tokens"] if d.startswith(fingerprint)]
            if len(matches) != 1:
                raise NotFoundError(f"{len(matches)} tokens match fingerprint {fingerprint!r}; need exactly one")
            info = data["tokens"].pop(matches[0])
        return TokenInfo(info["tenant"], info["label"], info["created_at"], matches[0][:12])

    def tokens(self) -> list[TokenInfo]:
        return [
            TokenInfo(t["tenant"], t["label"], t["created_at"], d[:12])
            for d, t in sorted(self._read()["tokens"].items())
        ]

    def tenant_for_token(self, token: str) -> str | None:
        """The tenant a token belongs to, or None. Digest lookup: no token comparison leaks timing."""
        digest = _digest(token)
        for known, tenant in self._static.items():
            if hmac.compare_digest(known, digest):
                return tenant
        entry = self._read()["tokens"].get(digest)
        if entry is None or entry["tenant"] not in self._read()["tenants"]:
            return None
        return str(entry["tenant"])

    def _read(self) -> dict[str, Any]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return {"tenants": {}, "tokens": {}}
        if self._cache is None or self._cache[0] != mtime:
            self._cache = (mtime, json.loads(self.path.read_text()))
        return self._cache[1]

    @contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / (self.path.name + ".lock")).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            data = self._read()
            data = {"tenants": dict(data["tenants"]), "tokens": dict(data["tokens"])}
            yield data
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
            tmp.chmod(0o600)
            tmp.replace(self.path)
            self._cache = None


def tenant_registry(settings: Settings) -> TenantRegistry:
    path = settings.tenants.tokens_file or settings.data_dir / "tenants.json"
    return TenantRegistry(path, settings.tenants.static_tokens)


# The tenant our own in-process code acts for (an agent's call to an in-process MCP server, a worker running
# a stored run): set only by code that resolved it from credentials or a stored record, never from a tool
# argument, a prompt or model output. Tools read it before the HTTP bearer token.
_acting: ContextVar[str | None] = ContextVar("acting_tenant", default=None)


@contextmanager
def acting_as(tenant: str) -> Iterator[None]:
    token = _acting.set(tenant)
    try:
        yield
    finally:
        _acting.reset(token)


def acting_tenant() -> str | None:
    return _acting.get()
