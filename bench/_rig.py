"""The orchestration benchmarks' rig: Orchestrion's runner on a scripted zero-latency chat model and zero-latency
tools served by a real in-process MCP server through the real toolbox, on a private Valkey and a SQLite
checkpoint file. Used by bench.orchestration and bench.tracing_overhead."""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from langgraph.checkpoint.base import BaseCheckpointSaver

from agents.deps import AgentDeps
from bench._report import ERR
from core.settings import Settings
from graphs.checkpointer import open_checkpointer
from graphs.runner import Runner
from graphs.runs import RunStore
from orchestrion.launcher import services
from orchestrion.launcher.ports import PortBook
from orchestrion.launcher.supervisor import launch
from routing.redis_loop import LoopRedis
from tests.graphs.scripted import Script, ToolLog, hit, scripted_factory, test_tools
from tools.toolbox import Toolbox

PLAN = {
    "steps": [
        {"id": "s1", "kind": "retrieve", "goal": "find it", "query": "okapi"},
        {"id": "s2", "kind": "answer", "goal": "answer", "depends_on": ["s1"]},
    ]
}
QUESTION = "What about okapis?"


@dataclass
class Rig:
    settings: Settings
    runner: Runner
    saver: BaseCheckpointSaver[str]

    async def ask(self) -> None:
        """One run through the runner: run and thread records, the lease, plan -> retrieve (MCP) -> answer."""
        done = await self.runner.ask("bench", QUESTION)
        assert done.status == "success" and done.citations, done


@contextmanager
def scratch(prefix: str, *, keep: bool = False) -> Iterator[Path]:
    """A temp dir for one benchmark run, removed afterwards unless `keep`."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        if keep:
            ERR.print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


@contextmanager
def private_redis(root: Path) -> Iterator[str]:
    """A Valkey of the benchmark's own under `root`; yields its URL."""
    spec = services.redis_spec(Settings(data_dir=root), PortBook(root))
    redis = launch(spec, root / "logs", ERR)
    try:
        yield spec.urls["redis_url"]
    finally:
        redis.stop()


@asynccontextmanager
async def open_rig(settings: Settings, redis_url: str) -> AsyncIterator[Rig]:
    """The runner with its toolbox serving; the checkpoint file under `settings.data_dir` (the product's SQLite
    settings)."""
    log = ToolLog(hits=[hit("zoo/okapi", 0, 0.9, "The okapi lives in the Ituri rainforest.", "Okapi")])
    toolbox = Toolbox({"tools": test_tools(log)}, {})
    script = Script().on("plan", PLAN).on("answer", "Okapis live in the rainforest [1].")

    async def plans(_: str) -> bool:
        return True

    deps = AgentDeps(scripted_factory(script), toolbox, settings.agents, plans)
    store = RunStore(LoopRedis(redis_url), f"bench-{uuid.uuid4().hex[:6]}", 3600)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with open_checkpointer(settings) as saver, anyio.create_task_group() as group:
        group.start_soon(toolbox.serve)
        await toolbox.ready()
        yield Rig(settings, Runner(deps, store, saver, settings.agents), saver)
        toolbox.close()


async def timed_runs(one: Callable[[], Awaitable[Any]], n: int) -> tuple[list[float], float]:
    """`n` back-to-back runs: each one's wall time, and this process's CPU time over all of them (every thread:
    SQLite's, an exporter's), in seconds."""
    times: list[float] = []
    cpu_started = time.process_time()
    for _ in range(n):
        started = time.perf_counter()
        await one()
        times.append(time.perf_counter() - started)
    return times, time.process_time() - cpu_started
