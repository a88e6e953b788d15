"""The MCP client layer against real servers: a third-party server from npm over stdio, Orchestrion's own
endpoint over streamable HTTP with a header from the environment, and a server that cannot start."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from core.errors import ConfigurationError
from core.settings import AgentSettings, Settings
from rag.services import RagServices
from tests.conftest import ApiServer
from tests.graphs.harness import answer, harness, plan, run, tool
from tests.graphs.scripted import Script
from tools.servers_file import ServerEntry, load_servers
from tools.toolbox import Toolbox

EVERYTHING = ServerEntry(command="npx", args=["-y", "@modelcontextprotocol/server-everything@2026.8.31"],
                         long_running=["trigger-long-running-operation"])  # fmt: skip


def test_a_third_party_npm_server_serves_the_executor(valkey: str, tmp_path: Path) -> None:
    script = Script().on("plan", plan(tool("s1", "get-sum", {"a": 2, "b": 3}), answer("s2", "s1")))
    script.on("answer", "The sum is 5 [1].")

    async def main() -> None:
        async with harness(valkey, tmp_path, script, external={"everything": EVERYTHING}) as h:
            names = {s.name for s in h.toolbox.specs()}
            assert {"get-sum", "echo", "add", "search_documents"} <= names
            spec = h.toolbox.get("trigger-long-running-operation")
            assert spec.long_running and not spec.in_process and spec.server == "everything"
            assert h.toolbox.get("simulate-research-query").long_running  # its task annotation says so
            done = await h.runner.ask("acme", "What is 2 + 3?")
            assert done.status == "success", done.error
            state = await h.runner.thread_state("acme", done.thread_id)
            assert state["step_results"]["p1.s1"]["ok"] and "5" in state["step_results"]["p1.s1"]["output"]
            assert done.citations[0]["kind"] == "tool" and done.citations[0]["source"] == "tool:get-sum"
            # the planner saw the third-party tools
            assert "get-sum" in script.calls[0][2][0].text

    run(main)


def test_a_server_that_fails_is_reported_once_and_the_others_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = ServerEntry(command=str(tmp_path / "no-such-program"))
    toolbox = Toolbox({}, {"broken": broken, "everything": EVERYTHING})

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(toolbox.serve)
            await toolbox.ready(120)
            assert set(toolbox.problems) == {"broken"}
            result = await toolbox.call("acme", "echo", {"message": "hi"})
            assert result.ok and "hi" in result.text
            toolbox.close()

    anyio.run(main)
    warnings = [r for r in caplog.records if "broken" in r.getMessage()]
    assert len(warnings) == 1 and "left out" in warnings[0].getMessage()


def test_a_remote_server_over_http_with_a_header_from_the_environment(
    rag: RagServices, tenant: str, api_server: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_TEST_TOKEN", rag.registry.issue_token(tenant))
    servers = tmp_path / "servers.json"
    servers.write_text(json.dumps({"mcpServers": {
        "remote": {"url": f"{api_server.url}/mcp", "headers": {"Authorization": "Bearer ${ORCH_TEST_TOKEN}"},
                   "requires_approval": True},
        "off": {"command": "nothing", "disabled": True},
    }}))  # fmt: skip
    entries = load_servers(Settings(data_dir=tmp_path, agents=AgentSettings(servers_file=servers)))
    assert set(entries) == {"remote"}
    toolbox = Toolbox({}, entries)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(toolbox.serve)
            await toolbox.ready(60)
            assert toolbox.problems == {}
            assert toolbox.get("search_documents").requires_approval
            result = await toolbox.call("ignored", "ping", {"message": "over http"})
            assert result.ok and result.structured and result.structured["echo"] == "over http"
            toolbox.close()

    anyio.run(main)


def test_a_bad_servers_file_names_the_problem(tmp_path: Path) -> None:
    servers = tmp_path / "servers.json"
    cases = {
        '{"mcpServers": {"x": {"args": []}}}': "give either `command` (stdio) or `url`",
        '{"mcpServers": {"x": {"url": "http://h/${MISSING_VAR_FOR_TEST}"}}}': "${MISSING_VAR_FOR_TEST} is not set",
        "{not json": "servers.json",
        '{"mcpServers": {"bad name": {"command": "x"}}}': "server names may hold",
    }
    for text, expected in cases.items():
        servers.write_text(text)
        with pytest.raises(
            ConfigurationError, match=expected.replace("$", r"\$").replace("(", r"\(").replace(")", r"\)")
        ):
            load_servers(Settings(data_dir=tmp_path, agents=AgentSettings(servers_file=servers)))
