"""The production endpoint's documents as MCP resources, completions of their ids and log levels, per tenant."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import ResourceTemplateReference

from orchestrion.knowledge import provision
from rag.services import RagServices
from tests.conftest import ApiServer
from tests.mcp_client import http
from tests.rag.helpers import GUIDE, ingest_text


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # logging/setLevel: handshake era
def test_documents_are_resources_of_their_own_tenant_only(rag: RagServices, api_server: ApiServer) -> None:
    provision(rag, "res-a")
    provision(rag, "res-b")
    ingest_text(rag, "res-a", GUIDE, doc_id="guides/payments")
    ingest_text(rag, "res-b", "# Other\n\nNothing to see.", doc_id="other")
    token_a, token_b = rag.registry.issue_token("res-a"), rag.registry.issue_token("res-b")

    async def as_a() -> tuple[Any, Any, Any, Any, Any]:
        async with Client(http(f"{api_server.url}/mcp", token_a), mode="legacy") as client:
            await client.set_logging_level("warning")
            listed = await client.list_resources()
            templates = await client.list_resource_templates()
            read = await client.read_resource("orchestrion://documents/guides/payments")
            listing = await client.read_resource("orchestrion://documents")
            ref = ResourceTemplateReference(type="ref/resource", uri="orchestrion://documents/{+doc_id}")
            completion = await client.complete(ref, {"name": "doc_id", "value": "gui"})
            return listed, templates, read, listing, completion

    listed, templates, read, listing, completion = anyio.run(as_a)
    uris = {str(r.uri) for r in listed.resources}
    assert "orchestrion://documents/guides/payments" in uris and "orchestrion://documents/other" not in uris
    assert [t.uri_template for t in templates.resource_templates] == ["orchestrion://documents/{+doc_id}"]
    assert "Every payment request carries an idempotency key" in read.contents[0].text
    assert [d["doc_id"] for d in json.loads(listing.contents[0].text)["documents"]] == ["guides/payments"]
    assert completion.completion.values == ["guides/payments"]

    async def as_b() -> None:
        async with Client(http(f"{api_server.url}/mcp", token_b)) as client:
            with pytest.raises(MCPError, match="no document"):
                await client.read_resource("orchestrion://documents/guides/payments")
            ref = ResourceTemplateReference(type="ref/resource", uri="orchestrion://documents/{+doc_id}")
            assert (await client.complete(ref, {"name": "doc_id", "value": "gui"})).completion.values == []

    anyio.run(as_b)
