"""MCP over HTTP bound to every interface (compose's 0.0.0.0) still checks Host and Origin (DNS rebinding),
and answers a request without a valid token in the project's error shape. The app is the one `orchestrion
serve` and `orchestrion mcp --http` serve, driven in process over ASGI."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from core.settings import ServerSettings, Settings
from core.tenancy import tenant_registry
from mcp_servers.context import ServerDeps
from mcp_servers.http import mcp_http_app
from mcp_servers.server import build_server
from orchestrion.launcher import services
from orchestrion.launcher.supervisor import launch
from rag.services import RagServices
from tests.conftest import CONSOLE, free_port

PUBLIC = "https://orch.example.test"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    server = ServerSettings(host="0.0.0.0", port=8400, public_url=PUBLIC, allowed_hosts=["orchestrion:*"],
                            allowed_origins=["https://ide.example.test"])  # fmt: skip
    return Settings(data_dir=tmp_path, server=server)


def _post_all(settings: Settings, requests: list[dict[str, str]]) -> list[httpx.Response]:
    """Each request's extra headers on an `initialize` POST to /mcp, in one app's lifetime."""
    mcp = build_server("all", settings, ServerDeps(), http_base_url=PUBLIC)
    app = mcp_http_app(mcp, settings, PUBLIC)

    async def run() -> list[httpx.Response]:
        async with mcp.session_manager.run():
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://unused") as client:
                base = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
                return [await client.post("/mcp", json=INITIALIZE, headers={**base, **extra}) for extra in requests]

    return anyio.run(run)


def _json_rpc_result(response: httpx.Response) -> dict[str, Any]:
    import json

    [data] = [line.removeprefix("data:").strip() for line in response.text.splitlines() if line.startswith("data:")]
    result: dict[str, Any] = json.loads(data)["result"]
    return result


def test_foreign_host_or_origin_is_refused_when_bound_to_every_interface(settings: Settings) -> None:
    registry = tenant_registry(settings)
    registry.add_tenant("acme")
    auth = {"Authorization": f"Bearer {registry.issue_token('acme')}"}
    allowed = [
        {"Host": "orch.example.test"},  # the public URL, as a proxy forwards it
        {"Host": "orch.example.test:443", "Origin": PUBLIC},
        {"Host": "orch.example.test", "Origin": "https://ide.example.test"},  # a configured origin
        {"Host": "orchestrion:8400"},  # a configured host: the service name in compose
        {"Host": "127.0.0.1:8400", "Origin": "http://localhost:8400"},
    ]
    refused = [
        ({"Host": "evil.example.test"}, 421),  # a rebinding page's own name
        ({"Host": "orch.example.test", "Origin": "https://evil.example.test"}, 403),
        ({"Host": "orch.example.test", "Origin": "http://orch.example.test"}, 403),  # not the public scheme
        ({"Host": "10.0.0.7:8400"}, 421),  # the host's address, not a name it is served under
    ]

    answers = _post_all(settings, [{**auth, **h} for h in allowed] + [{**auth, **h} for h, _ in refused])

    for headers, answer in zip(allowed, answers[: len(allowed)], strict=True):
        assert answer.status_code == 200, (headers, answer.text)
        assert _json_rpc_result(answer)["serverInfo"]["name"] == "orchestrion"
    for (headers, status), answer in zip(refused, answers[len(allowed) :], strict=True):
        assert answer.status_code == status, (headers, answer.status_code, answer.text)
        assert "serverInfo" not in answer.text


def test_without_a_valid_token_the_answer_is_the_project_error_shape(settings: Settings) -> None:
    registry = tenant_registry(settings)
    registry.add_tenant("acme")
    revoked = registry.issue_token("acme")
    registry.revoke(registry.tokens()[0].fingerprint)
    host = {"Host": "orch.example.test"}
    attempts = [{}, {"Authorization": "Bearer"}, {"Authorization": "Basic YWxpY2U6cHc="},
                {"Authorization": "Bearer orch_not-a-real-token"}, {"Authorization": f"Bearer {revoked}"},
                {"x-api-key": revoked}]  # fmt: skip

    answers = _post_all(settings, [{**host, **a} for a in attempts])

    for attempt, answer in zip(attempts, answers, strict=True):
        assert answer.status_code == 401, (attempt, answer.text)
        body = answer.json()
        assert set(body) == {"code", "message", "details", "trace_id"} and body["code"] == "unauthenticated"
        assert revoked not in answer.text and "serverInfo" not in answer.text
        # MCP clients follow this header to the protected-resource metadata.
        assert (
            f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"'
            in answer.headers["www-authenticate"]
        )


def test_the_standalone_http_server_bound_to_every_interface_checks_host_and_token(
    stack_env: dict[str, str], rag: RagServices, tenant: str, services_dir: Path
) -> None:
    port = free_port()
    env = {**stack_env, "ORCHESTRION_SERVER__HOST": "0.0.0.0"}
    spec = services.ServiceSpec(
        name="mcp-http-any", argv=[sys.executable, "-m", "orchestrion", "mcp", "all", "--http", "--port", str(port)],
        env=env, healthy=services.http_ok(f"http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp"),
        start_timeout_s=180.0,
    )  # fmt: skip
    process = launch(spec, services_dir / "logs", CONSOLE)
    try:
        url, token = f"http://127.0.0.1:{port}/mcp", rag.registry.issue_token(tenant)
        base = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {token}"}
        served = httpx.post(url, json=INITIALIZE, headers=base, timeout=30)
        rebound = httpx.post(url, json=INITIALIZE, headers={**base, "Host": "evil.example.test"}, timeout=30)
        foreign = httpx.post(url, json=INITIALIZE, headers={**base, "Origin": "https://evil.example.test"}, timeout=30)
        anonymous = httpx.post(url, json=INITIALIZE, headers={"Accept": base["Accept"]}, timeout=30)
    finally:
        process.stop()
    assert served.status_code == 200 and _json_rpc_result(served)["serverInfo"]["name"] == "orchestrion"
    assert (rebound.status_code, foreign.status_code) == (421, 403)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "unauthenticated"
