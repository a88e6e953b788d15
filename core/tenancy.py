"""Tenants and the bearer tokens that identify them.

A caller's tenant comes only from its credentials: a token looked up here, or for
local callers (stdio MCP, the CLI) the configured default tenant. Tokens are stored
as SHA-256 digests, so the registry file never holds a usable secret.

Static tokens (settings.tenants.static_tokens, e.g. from a secret store) are valid only while their tenant
exists and their digest is not on the registry's revoked list: removing the tenant or `orchestrion tenants
revoke` puts it there, so a tenant later added under the same name is not reached by the old secret.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
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
STATIC_LABEL = "static (settings)"


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise InvalidInputError(
            f"invalid tenant name {name!r}: use 1-63 lowercase letters, digits, '-' or '_', starting with a letter"
        )
    return name


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def write_private(path: Path, text: str) -> None:
    """Write a new file only its owner can read: created 0600, never readable by others for a moment."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)


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
        self._cache: tuple[tuple[int, int, int], dict[str, Any]] | None = None

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
            self._revoke_static(data, name)

    def revoke_all(self, name: str) -> int:
        """Revoke every token of a tenant (the first step of removing it: its access ends before its data)."""
        with self._writing() as data:
            kept = {d: t for d, t in data["tokens"].items() if t["tenant"] != name}
            revoked = len(data["tokens"]) - len(kept) + self._revoke_static(data, name)
            data["tokens"] = kept
        return revoked

    def _revoke_static(self, data: dict[str, Any], tenant: str) -> int:
        mine = [d for d, t in self._static.items() if t == tenant and d not in data["revoked"]]
        data["revoked"].update({d: {"tenant": tenant, "revoked_at": time.time()} for d in mine})
        return len(mine)

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
            static = [d for d in self._static if d not in data["revoked"]]
            matches = [d for d in [*data["tokens"], *static] if d.startswith(fingerprint)]
            if len(matches) != 1:
                raise NotFoundError(f"{len(matches)} tokens match fingerprint {fingerprint!r}; need exactly one")
            if matches[0] in data["tokens"]:
                info = data["tokens"].pop(matches[0])
            else:  # a static token stays in the settings: its digest goes on the revoked list
                info = {"tenant": self._static[matches[0]], "label": STATIC_LABEL, "created_at": 0.0}
                data["revoked"][matches[0]] = {"tenant": info["tenant"], "revoked_at": time.time()}
        return TokenInfo(info["tenant"], info["label"], info["created_at"], matches[0][:12])

    def tokens(self) -> list[TokenInfo]:
        data = self._read()
        static = {d: {"tenant": t, "label": STATIC_LABEL, "created_at": 0.0} for d, t in self._static.items()}
        live = {**{d: t for d, t in static.items() if d not in data["revoked"]}, **data["tokens"]}
        return [TokenInfo(t["tenant"], t["label"], t["created_at"], d[:12]) for d, t in sorted(live.items())]

    def tenant_for_token(self, token: str) -> str | None:
        """The tenant a token belongs to, or None: a dict lookup by the token's digest, so nothing compares
        the secret itself and the time taken tells nothing about how much of a guess was right."""
        digest = _digest(token)
        data = self._read()
        tenant = self._static.get(digest) if digest not in data["revoked"] else None
        if tenant is None:
            entry = data["tokens"].get(digest)
            tenant = entry["tenant"] if entry is not None else None
        if tenant is None or tenant not in data["tenants"]:
            return None
        return str(tenant)

    def _read(self) -> dict[str, Any]:
        """The file's content, parsed again only when it changed. The key is (mtime, size, inode), not the
        mtime alone: a write replaces the file by a new inode, so a revoke within one clock tick is seen."""
        try:
            seen = self.path.stat()
        except FileNotFoundError:
            return {"tenants": {}, "tokens": {}, "revoked": {}}
        if self._cache is None or self._cache[0] != (seen.st_mtime_ns, seen.st_size, seen.st_ino):
            with self.path.open("rb") as file:
                # Keyed by what was read: a replace between the stat() and the open() is seen next time.
                read = os.fstat(file.fileno())
                data = json.loads(file.read())
            data.setdefault("revoked", {})  # files written before static tokens could be revoked
            self._cache = ((read.st_mtime_ns, read.st_size, read.st_ino), data)
        return self._cache[1]

    @contextmanager
    def _writing(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with (self.path.parent / (self.path.name + ".lock")).open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            self._cache = None
            data = self._read()
            data = {key: dict(data[key]) for key in ("tenants", "tokens", "revoked")}
            yield data
            tmp = self.path.with_suffix(".tmp")
            write_private(tmp, json.dumps(data, indent=2, sort_keys=True))
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
