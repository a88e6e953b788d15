"""The agent API's approvals and run configs through `langgraph_sdk`, unchanged, against the production HTTP
server whose runs execute on scripted planner and answerer models (tests/graphs/run_host.py `serve`): the
bundled base model cannot plan a tool step, and these tests are about what the API does with one. Real Valkey,
the real SQLite checkpointer, a real stdio MCP server whose tool needs approval and marks every call it makes."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from langgraph_sdk import get_client

from orchestrion.launcher import services
from orchestrion.launcher.supervisor import launch
from rag.services import RagServices
from tests.conftest import CONSOLE, ApiServer, free_port
from tests.graphs.harness import answer, plan, tool

pytestmark = pytest.mark.anyio
EFFECT_SERVER = Path(__file__).parents[1] / "graphs" / "effect_server.py"
ONE = plan(tool("s1", "slow_effect", {"label": "one"}), answer("s2", "s1"))
TWO = plan(tool("s1", "slow_effect", {"label": "left"}), tool("s2", "slow_effect", {"label": "right"}),
           answer("s3", "s1", "s2"))  # fmt: skip


@pytest.fixture(scope="module")
def scripted_api(
    stack_env: dict[str, str], local_llm: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ApiServer]:
    root = tmp_path_factory.mktemp("scripted-api")
    effects = root / "effects.log"
    effects.touch()
    servers = root / "mcp-servers.json"
    servers.write_text(json.dumps({"mcpServers": {"effects": {
        "command": sys.executable, "args": [str(EFFECT_SERVER)], "env": {"EFFECTS_FILE": str(effects)},
        "requires_approval": ["slow_effect"],
    }}}))  # fmt: skip
    script = root / "script.json"
    script.write_text(json.dumps({"plan": ONE, "by_question": [["[two]", TWO]], "answer": "Recorded [1]."}))
    port = free_port()
    env = {
        **stack_env,  # its tenants file (tokens) and services; runs and their recovery under a key prefix of its own
        "ORCHESTRION_REDIS__KEY_PREFIX": f"{stack_env['ORCHESTRION_REDIS__KEY_PREFIX']}-scripted",
        "ORCHESTRION_AGENTS__SERVERS_FILE": str(servers),
        "ORCHESTRION_MODELS__LOCAL_LLM_URL": local_llm,  # the router needs a fleet; the runs' models are scripted
        "ORCHESTRION_AGENTS__MAX_TOOL_CALLS": "4",
        "EFFECTS_FILE": str(effects),
    }
    url = f"http://127.0.0.1:{port}"
    spec = services.ServiceSpec(
        name="scripted-api",
        argv=[sys.executable, "-m", "tests.graphs.run_host", "serve", str(script), str(port)],
        env=env,
        healthy=services.http_ok(f"{url}/healthz"),
        start_timeout_s=240.0,
    )
    process = launch(spec, root / "logs", CONSOLE)
    yield ApiServer(url, env)
    process.stop()


@pytest.fixture
def client(scripted_api: ApiServer, rag: RagServices, tenant: str) -> Any:
    return get_client(url=scripted_api.url, api_key=rag.registry.issue_token(tenant))


def _effects(api: ApiServer) -> list[str]:
    return [
        line.split()[1] for line in Path(api.env["EFFECTS_FILE"]).read_text().splitlines() if line.startswith("done")
    ]


async def test_an_approval_interrupts_the_run_and_a_command_resumes_it(client: Any, scripted_api: ApiServer) -> None:
    thread = await client.threads.create()
    parts = [p async for p in client.runs.stream(thread["thread_id"], "orchestration", input={"question": "Mark one"})]
    assert parts[0].event == "metadata" and parts[-1].event == "end", [p.event for p in parts]
    run = await client.runs.get(thread["thread_id"], parts[0].data["run_id"])
    assert run["status"] == "interrupted"
    shown = await client.threads.get(thread["thread_id"])
    assert shown["status"] == "interrupted"
    [pending] = [i for waiting in shown["interrupts"].values() for i in waiting]
    assert pending["value"]["kind"] == "approval" and pending["value"]["arguments"] == {"label": "one"}
    state = await client.threads.get_state(thread["thread_id"])
    assert [i["id"] for t in state["tasks"] for i in t["interrupts"]] == [pending["id"]]
    assert "one" not in _effects(scripted_api)  # nothing ran before the decision

    resumed = await client.runs.wait(thread["thread_id"], "orchestration", command={"resume": {"decision": "approve"}})
    assert resumed["answer"].startswith("Recorded [1].")
    assert _effects(scripted_api).count("one") == 1
    assert (await client.threads.get(thread["thread_id"]))["status"] == "idle"


async def test_several_interrupts_are_resumed_with_one_map_of_decisions(client: Any, scripted_api: ApiServer) -> None:
    thread = await client.threads.create()
    await client.runs.wait(thread["thread_id"], "orchestration", input={"question": "Mark both [two]"})
    shown = await client.threads.get(thread["thread_id"])
    pending = {i["value"]["arguments"]["label"]: i["id"] for waiting in shown["interrupts"].values() for i in waiting}
    assert set(pending) == {"left", "right"}, shown["interrupts"]

    decisions = {pending["left"]: "approve", pending["right"]: {"decision": "reject", "reason": "not today"}}
    resumed = await client.runs.wait(thread["thread_id"], "orchestration", command={"resume": decisions})
    assert resumed["answer"]
    done = _effects(scripted_api)
    assert "left" in done and "right" not in done
    right = [r for r in resumed["step_results"].values() if r.get("arguments", {}).get("label") == "right" or
             "not today" in str(r.get("error"))]  # fmt: skip
    assert right and not right[0]["ok"] and "not today" in right[0]["error"]


async def test_a_run_config_lowers_its_budgets_and_is_refused_above_the_servers(client: Any) -> None:
    thread = await client.threads.create()
    capped = await client.runs.wait(
        thread["thread_id"], "orchestration", input={"question": "Mark one"},
        config={"configurable": {"max_tool_calls": 0}, "tags": ["nightly"]},
    )  # fmt: skip
    assert capped["stop_reason"] == "tool-call budget spent (0 of 0 tool calls)", capped
    [run] = await client.runs.list(thread["thread_id"])
    assert run["kwargs"]["budgets"] == {"max_tool_calls": 0} and run["kwargs"]["tags"] == ["nightly"]

    for config, named in (
        ({"configurable": {"max_tool_calls": 5}}, "above this server's limit of 4"),
        ({"configurable": {"max_steps": "many"}}, "config.configurable.max_steps must be a number"),
        ({"configurable": {"max_steps": 1.5}}, "must be a whole number"),
        ({"configurable": {"max_parallel_steps": 0}}, "must be at least 1"),
    ):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            await client.runs.wait(thread["thread_id"], "orchestration", input={"question": "x"}, config=config)
        assert refused.value.response.status_code == 400 and named in refused.value.response.json()["message"]

    with pytest.raises(httpx.HTTPStatusError) as refused:
        await client.runs.wait(thread["thread_id"], "orchestration", input={"question": "x"}, context={"tenant": "b"})
    assert refused.value.response.status_code == 400 and "comes from the credentials" in refused.value.response.text


async def test_a_run_past_its_recursion_limit_ends_with_a_clear_error(client: Any) -> None:
    thread = await client.threads.create()
    ended = await client.runs.wait(
        thread["thread_id"], "orchestration", input={"question": "Mark one"}, config={"recursion_limit": 1},
        raise_error=False,
    )  # fmt: skip
    [run] = await client.runs.list(thread["thread_id"])
    assert run["status"] == "error", (run, ended)
    assert "recursion limit (1 graph steps)" in run["error"]
