"""A runner on real Valkey, a real SQLite checkpointer and the real toolbox, with scripted chat models."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from agents.deps import AgentDeps
from core.settings import AgentSettings, Settings
from graphs.checkpointer import open_checkpointer
from graphs.runner import Runner
from graphs.runs import RunStore
from routing.redis_loop import LoopRedis
from tests.graphs.scripted import Script, ToolLog, scripted_factory, test_tools
from tools.long_calls import LongCalls
from tools.servers_file import ServerEntry, ToolRules
from tools.toolbox import Toolbox

CHECKPOINT_URL_VARIABLE = "ORCH_TEST_CHECKPOINT_URL"


@dataclass
class Harness:
    runner: Runner
    script: Script
    tools: ToolLog
    toolbox: Toolbox
    events: list[tuple[str, dict[str, Any]]]

    async def record(self, mode: str, data: Any) -> None:
        if mode == "custom":  # the agents' progress events
            self.events.append((data["event"], data))


@asynccontextmanager
async def harness(
    valkey: str,
    data_dir: Path,
    script: Script,
    *,
    can_plan: bool = True,
    rules: ToolRules | None = None,
    long_calls: LongCalls | None = None,
    prefix: str | None = None,
    external: dict[str, ServerEntry] | None = None,
    **agent_settings: Any,
) -> AsyncIterator[Harness]:
    if os.environ.get(CHECKPOINT_URL_VARIABLE):  # the test runs on Postgres (see test_orchestration.py)
        agent_settings.setdefault("checkpoint_url", os.environ[CHECKPOINT_URL_VARIABLE])
    settings = Settings(data_dir=data_dir, agents=AgentSettings(**agent_settings))
    log = ToolLog()
    toolbox = Toolbox({"testtools": test_tools(log)}, external or {},
                      in_process_rules={"testtools": rules or ToolRules()})  # fmt: skip

    async def plans(_: str) -> bool:
        return can_plan

    deps = AgentDeps(scripted_factory(script), toolbox, settings.agents, plans, long_calls)
    store = RunStore(LoopRedis(valkey), prefix or f"t-{uuid.uuid4().hex[:8]}", 3600)
    async with open_checkpointer(settings) as checkpointer, anyio.create_task_group() as group:
        group.start_soon(toolbox.serve)
        await toolbox.ready()
        yield Harness(Runner(deps, store, checkpointer, settings.agents), script, log, toolbox, [])
        toolbox.close()


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return anyio.run(main)


def plan(*steps: dict[str, Any]) -> dict[str, Any]:
    return {"steps": list(steps)}


def retrieve(sid: str, query: str, *deps: str) -> dict[str, Any]:
    return {"id": sid, "kind": "retrieve", "goal": f"find {query}", "query": query, "depends_on": list(deps)}


def tool(sid: str, name: str, arguments: dict[str, Any] | None, *deps: str) -> dict[str, Any]:
    return {"id": sid, "kind": "tool", "goal": f"use {name}", "tool": name, "arguments": arguments,
            "depends_on": list(deps)}  # fmt: skip


def answer(sid: str, *deps: str) -> dict[str, Any]:
    return {"id": sid, "kind": "answer", "goal": "answer", "depends_on": list(deps)}
