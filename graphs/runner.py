"""Runs of the orchestration graph on a tenant's threads: start, execute, approve, read, recover.

Transport-free: the MCP `ask` tool, the HTTP API and a Celery task all drive runs through this.
Executing a run takes its lease and renews it while the graph runs; every superstep is checkpointed
before the next starts (durability "sync"), so a run whose process dies (its lease expires) is resumed
by any other process from its last checkpoint: finished steps are not run again, and a long tool call
in flight is attached to, not sent again (tools/long_calls.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from opentelemetry import trace

from agents.deps import AgentDeps
from agents.state import RunContext, run_input
from core.errors import InvalidInputError, NotFoundError, OrchestrionError
from core.settings import AgentSettings
from graphs.orchestration import build_graph
from graphs.runs import ERROR, INTERRUPTED, PENDING, RUNNING, SUCCESS, RunRecord, RunStore, ThreadRecord, new_id
from observability.propagation import current_trace_id

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("orchestrion.graphs")
GRAPH_NAME = "orchestration"
MAX_QUESTION_CHARS = 8000

# (kind, data): "plan", "step", "answer" (from the nodes), "update" (a node finished), "token" (answer text).
OnEvent = Callable[[str, dict[str, Any]], Awaitable[None]]


class RunLostError(OrchestrionError):
    """This process lost the run's lease (it stalled past the lease); another process resumes the run."""


def checkpoint_thread(tenant: str, thread_id: str) -> str:
    """The checkpointer's thread id: the tenant is part of it, so no tenant can reach another's checkpoints."""
    return f"{tenant}/{thread_id}"


@dataclass
class Runner:
    deps: AgentDeps
    store: RunStore
    checkpointer: BaseCheckpointSaver[str]
    settings: AgentSettings

    def __post_init__(self) -> None:
        self.graph: CompiledStateGraph[Any, Any, Any, Any] = build_graph(self.deps).compile(
            checkpointer=self.checkpointer, name=GRAPH_NAME
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._resuming: set[str] = set()

    # starting and executing
    async def ask(
        self, tenant: str, question: str, thread_id: str | None = None, *, on_event: OnEvent | None = None
    ) -> RunRecord:
        run = await self.start(tenant, question, thread_id)
        return await self.execute(run.run_id, on_event=on_event)

    async def start(self, tenant: str, question: str, thread_id: str | None = None) -> RunRecord:
        question = question.strip()
        if not question or len(question) > MAX_QUESTION_CHARS:
            raise InvalidInputError(f"the question must have 1 to {MAX_QUESTION_CHARS} characters")
        if thread_id is None:
            thread = await self.store.create_thread(tenant)
        else:
            thread = await self.store.thread(tenant, thread_id)  # NotFoundError: unknown here, or another tenant's
        if thread.status == INTERRUPTED:
            waiting = thread.last_run_id
            raise InvalidInputError(
                f"thread {thread.thread_id} waits for a decision on run {waiting}: approve or reject it first"
            )
        run = await self.store.create_run(
            RunRecord(new_id(), thread.thread_id, tenant, question), self.settings.run_lease_s
        )
        thread.status, thread.last_run_id = "busy", run.run_id
        await self.store.save_thread(thread)
        return run

    async def execute(self, run_id: str, *, resume: Any = None, on_event: OnEvent | None = None) -> RunRecord:
        """Run (or go on with) a run in this process until it ends or waits for a decision."""
        run = await self.store.run(run_id)
        if run.status in (SUCCESS, ERROR):
            return run
        if not await self.store.take_lease(run_id, self.owner, self.settings.run_lease_s):
            raise OrchestrionError(f"run {run_id} is being executed by another process")
        try:
            await self.deps.toolbox.ready()  # a process just started: its MCP servers are still connecting
            return await self._execute(run, resume, on_event)
        finally:
            await self.store.release_lease(run_id, self.owner)

    async def _execute(self, run: RunRecord, resume: Any, on_event: OnEvent | None) -> RunRecord:
        config: Any = {
            "configurable": {"thread_id": checkpoint_thread(run.tenant, run.thread_id)},
            "metadata": {"run_id": run.run_id, "graph": GRAPH_NAME},
        }
        context = RunContext(run.tenant, run.run_id, run.thread_id)
        run.status, run.executions = RUNNING, run.executions + 1
        run.started_at = run.started_at or time.time()
        await self.store.save_run(run)
        with _tracer.start_as_current_span(
            f"run {GRAPH_NAME}", attributes={"run.id": run.run_id, "thread.id": run.thread_id}
        ):
            run.trace_id = run.trace_id or current_trace_id()
            graph_input = await self._input(run, config, resume)
            try:
                await self._drive(run, graph_input, config, context, on_event)
            except RunLostError:
                raise
            except OrchestrionError as exc:
                return await self._failed(run, str(exc))
            except Exception as exc:
                log.exception("run %s failed", run.run_id)
                return await self._failed(run, f"internal error ({type(exc).__name__}); trace id {run.trace_id}")
        return await self._settle(run, config)

    async def _input(self, run: RunRecord, config: Any, resume: Any) -> Any:
        if resume is not None:
            return Command(resume=resume)
        snapshot = await self.graph.aget_state(config)
        if (snapshot.values or {}).get("run_id") == run.run_id:
            return None  # this run's input is checkpointed: go on from the last checkpoint
        return run_input(run.question, run.run_id, run.started_at or time.time())

    async def _drive(
        self, run: RunRecord, graph_input: Any, config: Any, context: RunContext, on_event: OnEvent | None
    ) -> None:
        lost = asyncio.Event()

        async def keep_lease() -> None:
            while True:
                await asyncio.sleep(self.settings.run_lease_s / 3)
                if not await self.store.renew_lease(run.run_id, self.owner, self.settings.run_lease_s):
                    lost.set()
                    return

        keeper = asyncio.create_task(keep_lease())
        try:
            async for mode, chunk in self.graph.astream(
                graph_input, config, context=context, stream_mode=["custom", "updates"], durability="sync"
            ):
                if lost.is_set():
                    raise RunLostError(f"run {run.run_id}: lease lost; another process resumes it")
                if on_event is not None:
                    await _forward(on_event, mode, chunk)
        finally:
            keeper.cancel()

    async def _settle(self, run: RunRecord, config: Any) -> RunRecord:
        snapshot = await self.graph.aget_state(config)
        values: Any = snapshot.values or {}
        interrupts = [{"id": i.id, "value": i.value} for task in snapshot.tasks for i in task.interrupts]
        run.usage = dict(values.get("usage") or {})
        run.plan_source = str((values.get("plan") or {}).get("source", ""))
        thread = await self.store.thread(run.tenant, run.thread_id)
        if interrupts:
            run.status, run.interrupts = INTERRUPTED, interrupts
            thread.status = INTERRUPTED
        else:
            run.status, run.interrupts, run.finished_at = SUCCESS, [], time.time()
            run.answer, run.citations = values.get("answer"), list(values.get("citations") or [])
            run.stop_reason = values.get("stop_reason") or ""
            thread.status = "idle"
            await self.store.free_thread(run)
        await self.store.save_run(run)
        await self.store.save_thread(thread)
        return run

    async def _failed(self, run: RunRecord, reason: str) -> RunRecord:
        run.status, run.error, run.finished_at = ERROR, reason, time.time()
        await self.store.save_run(run)
        try:
            thread = await self.store.thread(run.tenant, run.thread_id)
            thread.status = "error"
            await self.store.save_thread(thread)
        finally:
            await self.store.free_thread(run)
        return run

    # decisions
    async def approve(
        self, tenant: str, run_id: str, approved: bool, reason: str = "", *, on_event: OnEvent | None = None
    ) -> RunRecord:
        """Resume a run waiting for a decision: every pending approval gets this one, with the arguments it
        showed, so exactly what was approved runs."""
        run = await self.store.run_of(tenant, run_id)
        if run.status != INTERRUPTED or not run.interrupts:
            raise InvalidInputError(f"run {run_id} is not waiting for a decision (it is {run.status})")
        decisions = {
            i["id"]: {
                "decision": "approve" if approved else "reject",
                "reason": reason,
                "arguments": (i.get("value") or {}).get("arguments"),
            }
            for i in run.interrupts
        }
        return await self.execute(run_id, resume=decisions, on_event=on_event)

    # reading
    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        return await self.store.run_of(tenant, run_id)

    async def list_threads(self, tenant: str, limit: int = 20, offset: int = 0) -> list[ThreadRecord]:
        return await self.store.threads(tenant, limit, offset)

    async def thread_state(self, tenant: str, thread_id: str) -> dict[str, Any]:
        await self.store.thread(tenant, thread_id)  # NotFoundError for another tenant's
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": checkpoint_thread(tenant, thread_id)}})
        return dict(snapshot.values or {})

    # recovery
    async def recover_forever(self) -> None:
        """Resume runs whose process died (their lease expired while running), as long as this process lives."""
        while True:
            try:
                await self.recover_once()
            except Exception:
                log.warning("looking for orphaned runs failed", exc_info=True)
            await asyncio.sleep(self.settings.recovery_interval_s)

    async def recover_once(self) -> list[str]:
        resumed = []
        for run_id in await self.store.expired_leases():
            if run_id in self._resuming:
                continue
            try:
                run = await self.store.run(run_id)
            except NotFoundError:
                await self.store.forget_lease(run_id)
                continue
            if run.status not in (PENDING, RUNNING):
                await self.store.forget_lease(run_id)
                continue
            self._resuming.add(run_id)
            resumed.append(run_id)
            asyncio.create_task(self._resume(run_id))  # noqa: RUF006 - tracked in _resuming
        return resumed

    async def _resume(self, run_id: str) -> None:
        try:
            log.info("resuming run %s from its last checkpoint (its process stopped)", run_id)
            await self.execute(run_id)
        except OrchestrionError as exc:
            log.info("run %s not resumed here: %s", run_id, exc)
        except Exception:
            log.exception("resuming run %s failed", run_id)
        finally:
            self._resuming.discard(run_id)


async def _forward(on_event: OnEvent, mode: str, chunk: Any) -> None:
    if mode == "custom" and isinstance(chunk, dict) and "event" in chunk:
        await on_event(str(chunk["event"]), chunk)
    elif mode == "updates" and isinstance(chunk, dict):
        for node, update in chunk.items():
            if node != "__interrupt__":
                await on_event("update", {"node": node, "update": update})
