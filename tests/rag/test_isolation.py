"""Tenant B can never reach tenant A's data: not by search, filter, id, job id, or argument.

"Client A sees client B's data" is the seed article's vector DB failure; this test
plays tenant B against tenant A through every tool of the real MCP HTTP server and
every route of the real HTTP API.
"""

from __future__ import annotations

import uuid

import httpx
import pytest

from core.errors import NotFoundError
from orchestrion.knowledge import provision, remove_tenant
from rag.ingest import Submission
from rag.search import SearchRequest, search
from rag.services import RagServices
from tests.conftest import ApiServer
from tests.mcp_client import call, http, text_of, tool_schemas
from tests.rag.helpers import GUIDE, ingest_text, wait_jobs

SECRET = GUIDE.replace("Payments guide", "Acme payments guide (confidential)")


@pytest.fixture
def two_tenants(rag: RagServices) -> tuple[str, str]:
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    provision(rag, a)
    provision(rag, b)
    return a, b


def test_tenant_b_gets_nothing_of_tenant_a_through_any_mcp_tool(
    rag: RagServices, api_server: ApiServer, two_tenants: tuple[str, str]
) -> None:
    a, b = two_tenants
    job_a = ingest_text(rag, a, SECRET, doc_id="secret-plan", tags=("confidential",), metadata={"client": "acme"})
    token_b = rag.registry.issue_token(b, "test")
    mcp = f"{api_server.url}/mcp"
    exact = "Every payment request carries an idempotency key"
    filters = [
        None,
        {"field": "doc_id", "op": "eq", "value": "secret-plan"},
        {"field": "tags", "op": "any_of", "value": ["confidential"]},
        {"field": "meta.client", "op": "eq", "value": "acme"},
        {
            "any": [
                {"field": "doc_type", "op": "eq", "value": "markdown"},
                {"field": "chunk_index", "op": "gte", "value": 0},
            ]
        },
        {
            "all": [
                {"field": "title", "op": "like", "value": "*Acme*"},
                {"field": "source", "op": "eq", "value": "doc.md"},
            ]
        },
    ]
    calls = [
        ("search_documents", {"query": exact, "mode": mode, "k": 50, "filters": f})
        for mode in ("vector", "keyword", "hybrid")
        for f in filters
    ]
    calls += [
        ("search_documents", {"query": exact, "tenant": a}),  # naming A is no way in
        ("get_document", {"doc_id": "secret-plan"}),
        ("list_documents", {"limit": 200}),
        ("get_ingest_status", {"job_id": job_a.job_id}),
        ("delete_document", {"doc_id": "secret-plan"}),
    ]

    results = call(http(mcp, token_b), calls)
    [control] = call(http(mcp, rag.registry.issue_token(a)), [("search_documents", {"query": exact, "k": 3})])

    searches, (named, get_doc, listing, status, delete) = results[:-5], results[-5:]
    assert control.structured_content and control.structured_content["hits"][0]["doc_id"] == "secret-plan"
    for result in searches:
        assert not result.is_error, text_of(result)
        assert result.structured_content == {"hits": []}
    assert named.is_error or named.structured_content == {"hits": []}
    assert get_doc.is_error and "no document" in text_of(get_doc)
    assert listing.structured_content == {"documents": [], "next_cursor": None}
    assert status.is_error and "no ingest job" in text_of(status)
    assert delete.is_error and "no document" in text_of(delete)
    assert rag.store.document(a, "secret-plan").chunk_count == job_a.result["written"]  # A's data untouched


def test_no_tool_accepts_a_tenant_argument(api_server: ApiServer, rag: RagServices, tenant: str) -> None:
    schemas = tool_schemas(http(f"{api_server.url}/mcp", rag.registry.issue_token(tenant)))
    assert {"search_documents", "get_document", "list_documents", "ingest_documents", "get_ingest_status",
            "delete_document"} <= set(schemas)  # fmt: skip
    assert not [name for name, schema in schemas.items() if "tenant" in str(schema.get("properties", {}))]


def test_without_a_valid_token_the_mcp_endpoint_answers_401(api_server: ApiServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream"}
    assert httpx.post(f"{api_server.url}/mcp", json=body, headers=headers).status_code == 401
    forged = {**headers, "Authorization": "Bearer orch_not-a-real-token"}
    assert httpx.post(f"{api_server.url}/mcp", json=body, headers=forged).status_code == 401


def test_tenant_b_gets_nothing_of_tenant_a_through_the_http_api(
    rag: RagServices, api_server: ApiServer, two_tenants: tuple[str, str]
) -> None:
    a, b = two_tenants
    job_a = ingest_text(rag, a, SECRET, doc_id="secret-plan")
    auth = {"Authorization": f"Bearer {rag.registry.issue_token(b)}"}
    api = api_server.url

    assert httpx.get(f"{api}/v1/documents/secret-plan", headers=auth).status_code == 404
    assert httpx.get(f"{api}/v1/jobs/{job_a.job_id}", headers=auth).status_code == 404
    assert httpx.delete(f"{api}/v1/documents/secret-plan", headers=auth).status_code == 404
    assert httpx.get(f"{api}/v1/documents", headers=auth).json() == {"documents": []}
    found = httpx.post(f"{api}/v1/search", json={"query": "idempotency key", "k": 50}, headers=auth, timeout=60)
    assert found.status_code == 200 and found.json() == {"hits": []}
    assert httpx.get(f"{api}/v1/documents", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{api}/v1/documents").status_code == 401


def test_same_doc_id_in_two_tenants_are_two_documents(rag: RagServices, two_tenants: tuple[str, str]) -> None:
    a, b = two_tenants
    ingest_text(rag, a, SECRET, doc_id="shared-name")
    ingest_text(rag, b, "# B's own\n\nNothing to do with payments.", doc_id="shared-name")
    assert "Acme" in rag.store.document(a, "shared-name").title
    assert rag.store.document(b, "shared-name").title == "B's own"
    rag.store.delete_document(b, "shared-name")
    assert rag.store.document(a, "shared-name").chunk_count > 0


def test_metadata_keys_and_types_of_one_tenant_neither_constrain_nor_show_to_another(
    rag: RagServices, two_tenants: tuple[str, str]
) -> None:
    """Weaviate properties belong to the collection, which every tenant shares: a key tenant A used must not
    fix its type for B, nor answer B differently from a key nobody ever used."""
    a, b = two_tenants
    used_by_a = f"k{uuid.uuid4().hex[:10]}"  # fresh keys: no earlier test made their properties
    never_used = f"k{uuid.uuid4().hex[:10]}"
    ingest_text(rag, a, SECRET, doc_id="a-doc", metadata={"client": "acme", used_by_a: "x"})
    job_b = ingest_text(rag, b, GUIDE, doc_id="b-doc", metadata={"client": 5, "rank": 2.5})  # A's key, a number
    assert job_b.result["written"] > 0

    def found(tenant: str, condition: dict[str, object]) -> list[str]:
        request = SearchRequest.model_validate({"query": "refund", "mode": "keyword", "k": 50, "filters": condition})
        return sorted({h.doc_id for h in search(rag.store, rag.embedder, tenant, request)})

    assert found(b, {"field": "meta.client", "op": "gte", "value": 4}) == ["b-doc"]  # ints and floats compare
    assert found(b, {"field": "meta.rank", "op": "lt", "value": 3}) == ["b-doc"]
    assert found(b, {"field": "meta.client", "op": "eq", "value": "acme"}) == []
    assert found(a, {"field": "meta.client", "op": "eq", "value": "acme"}) == ["a-doc"]
    conditions = [
        {"op": "eq", "value": "x"},
        {"op": "ne", "value": "x"},
        {"op": "like", "value": "*"},
        {"op": "any_of", "value": ["x", "y"]},
        {"op": "none_of", "value": ["x"]},
        {"op": "eq", "value": 1},
    ]
    for condition in conditions:
        as_used = found(b, {"field": f"meta.{used_by_a}", **condition})
        as_unused = found(b, {"field": f"meta.{never_used}", **condition})
        assert as_used == as_unused, condition  # no error, no difference: B learns nothing of A's keys
    assert found(a, {"field": f"meta.{used_by_a}", "op": "eq", "value": "x"}) == ["a-doc"]


def test_a_removed_tenant_added_again_under_its_name_starts_empty(rag: RagServices) -> None:
    name = f"r-{uuid.uuid4().hex[:8]}"
    provision(rag, name)
    token = rag.registry.issue_token(name, "before")
    doc = Submission(SECRET.encode(), "plan.md")
    [before] = rag.ingest.submit(name, [doc], idempotency_key="plan-upload")
    wait_jobs(rag, name, [before])

    remove_tenant(rag, name)
    assert rag.registry.tenant_for_token(token) is None and not rag.registry.has_tenant(name)
    with pytest.raises(NotFoundError):
        remove_tenant(rag, name)

    provision(rag, name)
    assert rag.store.list_documents(name, 10, 0) == []
    assert rag.registry.tenant_for_token(token) is None  # the old token does not come back with the name
    [after] = rag.ingest.submit(name, [doc], idempotency_key="plan-upload")  # the key is the new tenant's
    assert after.job_id != before.job_id
    [after] = wait_jobs(rag, name, [after])
    assert after.result["written"] > 0
