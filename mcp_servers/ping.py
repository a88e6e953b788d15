"""The smallest MCP server: proves the transports, the mount and the clients end to end."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from mcp_servers.context import READ_ONLY


class Pong(BaseModel):
    pong: bool = Field(description="Always true when the server answers.")
    server: str = Field(description="Name of the answering server.")
    version: str = Field(description="Orchestrion version.")
    echo: str = Field(description="The message sent, unchanged.")


def orchestrion_version() -> str:
    try:
        return version("orchestrion")
    except PackageNotFoundError:
        return "0+unknown"


def add_ping_tool(server: MCPServer) -> None:
    @server.tool(
        name="ping",
        description="Check that Orchestrion's MCP endpoint answers; echoes a message.",
        annotations=READ_ONLY,
    )
    def ping(message: str = Field(default="", max_length=1000, description="Text to echo back.")) -> Pong:
        return Pong(pong=True, server=server.name, version=orchestrion_version(), echo=message)
