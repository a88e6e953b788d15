"""The tenant registry on its own file: static tokens, revocation across processes, private files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import Settings
from core.tenancy import STATIC_LABEL, TenantRegistry
from orchestrion.demo import local_token

STATIC = "orch_static-from-the-secret-store"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "tenants.json"


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask: a file created without a mode is world-readable
    yield
    os.umask(old)


def test_a_static_token_ends_with_its_tenant_and_does_not_reach_a_new_one_of_its_name(path: Path) -> None:
    registry = TenantRegistry(path, {STATIC: "acme"})
    assert registry.tenant_for_token(STATIC) is None  # no tenant "acme" yet: the token names nobody
    registry.add_tenant("acme")
    assert registry.tenant_for_token(STATIC) == "acme"

    registry.revoke_all("acme")  # the first step of removing a tenant
    registry.remove_tenant("acme")
    assert registry.tenant_for_token(STATIC) is None
    registry.add_tenant("acme")
    assert registry.tenant_for_token(STATIC) is None  # the old secret is not the new tenant's
    # Another process, with the same settings, reads the revocation from the file.
    assert TenantRegistry(path, {STATIC: "acme"}).tenant_for_token(STATIC) is None
    assert TenantRegistry(path, {"orch_a-new-secret": "acme"}).tenant_for_token("orch_a-new-secret") == "acme"


def test_a_static_token_is_listed_and_revoked_by_its_fingerprint(path: Path) -> None:
    registry = TenantRegistry(path, {STATIC: "acme"})
    registry.add_tenant("acme")
    issued = registry.issue_token("acme", "ci")
    [static] = [t for t in registry.tokens() if t.label == STATIC_LABEL]
    assert static.tenant == "acme"

    assert registry.revoke(static.fingerprint).label == STATIC_LABEL
    assert TenantRegistry(path, {STATIC: "acme"}).tenant_for_token(STATIC) is None
    assert registry.tenant_for_token(issued) == "acme"  # the tenant and its other tokens stay
    assert [t.label for t in registry.tokens()] == ["ci"]
    assert STATIC not in path.read_text() and issued not in path.read_text()  # digests only


def test_a_revoke_within_the_same_clock_tick_is_seen_by_the_next_lookup(path: Path) -> None:
    server, cli = TenantRegistry(path), TenantRegistry(path)  # two processes' registries on one file
    cli.add_tenant("acme")
    token = cli.issue_token("acme")
    assert server.tenant_for_token(token) == "acme"  # the server has the file cached now
    before = path.stat()

    cli.revoke(cli.tokens()[0].fingerprint)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # the same mtime, as within one tick

    assert server.tenant_for_token(token) is None


def test_the_registry_and_the_local_token_are_private_from_their_creation(
    tmp_path: Path, path: Path, umask_022: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No chmod after the fact: a file made private only after it was written was readable meanwhile.
    monkeypatch.setattr(os, "chmod", lambda *_a, **_k: None)
    registry = TenantRegistry(path)
    registry.add_tenant("acme")
    token = local_token(Settings(data_dir=tmp_path), lambda: registry.issue_token("acme", "local"))

    assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "local-token").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "local-token").read_text().strip() == token


def test_config_shows_no_secret(tmp_path: Path) -> None:
    secrets = {
        "ORCHESTRION_TENANTS__STATIC_TOKENS": json.dumps({STATIC: "acme"}),
        "OPENAI_API_KEY": "sk-openai-secret-key",
        "LANGFUSE_SECRET_KEY": "sk-lf-secret-key",
        "REDIS_URL": "redis://:redis-password@cache:6379/0",
        "ORCHESTRION_AGENTS__CHECKPOINT_URL": "postgresql://orch:pg-password@db:5432/orch",
    }
    env = {**os.environ, **secrets, "ORCHESTRION_DATA_DIR": str(tmp_path)}
    shown = subprocess.run(
        [sys.executable, "-m", "orchestrion", "config"], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    for secret in (STATIC, "sk-openai-secret-key", "sk-lf-secret-key", "redis-password", "pg-password"):
        assert secret not in shown.stdout + shown.stderr
    config = json.loads(shown.stdout)
    assert list(config["tenants"]["static_tokens"].values()) == ["acme"]  # what is configured still shows
    assert config["redis"]["url"] == "redis://:**********@cache:6379/0"
