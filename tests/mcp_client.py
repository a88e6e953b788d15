"""Drive MCP servers with the official SDK client, over HTTP (with a bearer token) or stdio."""

from __future__ import annotations

from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import CallToolResult


def http(url: str, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return streamable_http_client(url, http_client=create_mcp_http_client(headers=headers))


def call(server: Any, calls: list[tuple[str, dict[str, Any]]]) -> list[CallToolResult]:
    """Open one session and make the calls in order."""

    async def run() -> list[CallToolResult]:
        async with Client(server) as client:
            return [await client.call_tool(name, args) for name, args in calls]

    return anyio.run(run)


def tool_schemas(server: Any) -> dict[str, dict[str, Any]]:
    async def run() -> dict[str, dict[str, Any]]:
        async with Client(server) as client:
            return {t.name: t.input_schema for t in (await client.list_tools()).tools}

    return anyio.run(run)


def stdio(env: dict[str, str], *args: str) -> StdioServerParameters:
    import sys

    return StdioServerParameters(command=sys.executable, args=["-m", "orchestrion", "mcp", *args], env=env)


def text_of(result: CallToolResult) -> str:
    return " ".join(getattr(block, "text", "") for block in result.content)
