"""Tokens against the real `orchestrion serve`: on the HTTP API (Bearer and x-api-key) and MCP HTTP, a missing,
malformed, unknown or revoked token gets 401 in the one error shape and nothing else, and a revoke takes
effect on the very next request."""

from __future__ import annotations

import os
from typing import Any

import httpx

from rag.services import RagServices
from tests.conftest import ApiServer

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _requests(api: str, headers: dict[str, Any]) -> list[httpx.Response]:
    """One request to each kind of route: documents, search, jobs, the agent API, MCP."""
    with httpx.Client(base_url=api, timeout=30) as client:
        return [
            client.get("/v1/documents", headers=headers),
            client.post("/v1/search", headers=headers, json={"query": "refunds", "k": 3}),
            client.get("/v1/jobs/some-job", headers=headers),
            client.post("/threads/search", headers=headers, json={}),
            client.post("/mcp", headers={**MCP_HEADERS, **headers}, json=INITIALIZE),
        ]


def _assert_refused(answers: list[httpx.Response], secret: str) -> None:
    for answer in answers:
        assert answer.status_code == 401, (answer.request.url, answer.text)
        body = answer.json()
        assert set(body) == {"code", "message", "details", "trace_id"}, body
        assert body["code"] == "unauthenticated" and body["details"] is None
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert secret not in answer.text


def test_missing_malformed_unknown_and_revoked_tokens_get_401_and_nothing_else(
    rag: RagServices, tenant: str, api_server: ApiServer
) -> None:
    revoked = rag.registry.issue_token(tenant, "to revoke")
    [info] = [t for t in rag.registry.tokens() if t.tenant == tenant]
    rag.registry.revoke(info.fingerprint)
    valid = rag.registry.issue_token(tenant, "valid")
    attempts: list[dict[str, Any]] = [
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Token {valid}"},  # a valid token under another scheme
        {"Authorization": "Basic YWxpY2U6cHc="},
        {"Authorization": "Bearer orch_not-a-real-token"},
        {"Authorization": b"Bearer \xff\xfe-binary"},
        {"Authorization": "Bearer " + "x" * 8000},
        {"Authorization": f"Bearer {revoked}"},
        {"Authorization": f"Bearer {valid[:-1]}"},  # all of a valid token but its last character
        {"x-api-key": revoked},
        {"x-api-key": ""},
    ]
    for headers in attempts:
        _assert_refused(_requests(api_server.url, headers), revoked)

    for headers in ({"Authorization": f"Bearer {valid}"}, {"x-api-key": valid}):
        answers = _requests(api_server.url, headers)
        assert [a.status_code for a in answers[:4]] == [200, 200, 404, 200], [a.text for a in answers]
    mcp_ok = httpx.post(f"{api_server.url}/mcp", headers={**MCP_HEADERS, "Authorization": f"Bearer {valid}"},
                        json=INITIALIZE, timeout=30)  # fmt: skip
    assert mcp_ok.status_code == 200 and "serverInfo" in mcp_ok.text


def test_a_revoke_takes_effect_on_the_next_request_even_within_one_clock_tick(
    rag: RagServices, tenant: str, api_server: ApiServer
) -> None:
    token = rag.registry.issue_token(tenant, "soon revoked")
    [info] = [t for t in rag.registry.tokens() if t.tenant == tenant]
    bearer, api_key = {"Authorization": f"Bearer {token}"}, {"x-api-key": token}
    assert httpx.get(f"{api_server.url}/v1/documents", headers=bearer).status_code == 200  # the server caches
    mcp = httpx.post(f"{api_server.url}/mcp", headers={**MCP_HEADERS, **bearer}, json=INITIALIZE, timeout=30)
    assert mcp.status_code == 200
    before = rag.registry.path.stat()

    rag.registry.revoke(info.fingerprint)
    # The revoke lands within the same mtime as the file the server cached (a coarse clock, a fast CLI).
    os.utime(rag.registry.path, ns=(before.st_atime_ns, before.st_mtime_ns))

    _assert_refused(_requests(api_server.url, bearer), token)
    _assert_refused(_requests(api_server.url, api_key), token)
