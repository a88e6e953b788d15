"""Third-party MCP servers, declared as Claude Desktop declares them (`mcpServers`), plus what agents must know.

    {"mcpServers": {
       "everything": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-everything"],
                      "long_running": ["longRunningOperation"], "requires_approval": ["trigger-elicitation"]},
       "docs": {"url": "https://example.com/mcp", "headers": {"Authorization": "Bearer ${DOCS_TOKEN}"}}}}

`${NAME}` in env, headers, args and url is replaced from the environment (or the `.env` file), so secrets
stay out of the file. `long_running` / `requires_approval`: a list of tool names, or true for all.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core.errors import ConfigurationError
from core.settings import Settings

SERVER_NAME = r"^[A-Za-z0-9_-]{1,64}$"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ToolRules(BaseModel):
    """What agents must know of a server's tools beyond what the server says."""

    model_config = ConfigDict(extra="forbid")

    long_running: list[str] | bool = Field(
        default_factory=list, description="Tools run on the Celery `tools` queue (true: all of this server's)."
    )
    requires_approval: list[str] | bool = Field(
        default_factory=list, description="Tools that wait for a person's approval before they run (true: all)."
    )
    timeout_s: float | None = Field(default=None, gt=0, description="Per-call timeout; default agents.tool_timeout_s.")

    def is_long_running(self, tool: str) -> bool:
        return self.long_running is True or (isinstance(self.long_running, list) and tool in self.long_running)

    def needs_approval(self, tool: str) -> bool:
        return self.requires_approval is True or (
            isinstance(self.requires_approval, list) and tool in self.requires_approval
        )


class ServerEntry(ToolRules):
    command: str | None = Field(default=None, description="Program of a stdio server.")
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict, description="Extra environment of a stdio server.")
    cwd: str | None = None
    url: str | None = Field(default=None, description="Streamable-HTTP endpoint of a remote server.")
    headers: dict[str, str] = Field(default_factory=dict, description="HTTP headers (e.g. Authorization).")
    disabled: bool = False

    @model_validator(mode="after")
    def _one_transport(self) -> ServerEntry:
        if (self.command is None) == (self.url is None):
            raise ValueError("give either `command` (stdio) or `url` (streamable HTTP)")
        return self


class ServersFile(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    servers: dict[str, ServerEntry] = Field(default_factory=dict, alias="mcpServers")


def servers_file_path(settings: Settings) -> Path | None:
    if settings.agents.servers_file is not None:
        return settings.agents.servers_file
    default = settings.data_dir / "mcp-servers.json"
    return default if default.is_file() else None


def load_servers(settings: Settings) -> dict[str, ServerEntry]:
    """The enabled servers of the servers file; none when there is no file. A bad file stops the process at
    start with the reason (a run must not discover it)."""
    path = servers_file_path(settings)
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"MCP servers file {path}: {exc}") from None
    variables = {**{k: v for k, v in dotenv_values(".env").items() if v is not None}, **os.environ}
    try:
        parsed = ServersFile.model_validate(_expand(raw, variables, path))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigurationError(f"MCP servers file {path}: {problems}") from None
    bad = [name for name in parsed.servers if not re.match(SERVER_NAME, name)]
    if bad:
        raise ConfigurationError(f"MCP servers file {path}: server names may hold letters, digits, - and _: {bad}")
    return {name: entry for name, entry in parsed.servers.items() if not entry.disabled}


def _expand(value: Any, variables: dict[str, str], path: Path) -> Any:
    if isinstance(value, str):

        def lookup(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise ConfigurationError(f"MCP servers file {path}: ${{{name}}} is not set in the environment")
            return variables[name]

        return _VARIABLE.sub(lookup, value)
    if isinstance(value, list):
        return [_expand(v, variables, path) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, variables, path) for k, v in value.items()}
    return value
