"""Runs of the orchestration graph on a tenant's threads: start, execute, approve, read, recover.

Transport-free: the MCP `ask` tool, the HTTP API and a Celery task all drive runs through this.
Executing a run takes its lease and renews it while the graph runs; every superstep is checkpointed
before the next starts (durability "sync"), so a run whose process dies (its lease expires) is resumed
by any other process from its last checkpoint: finished steps are not run again, and a long tool call
in flight is attached to, not sent again (tools/long_calls.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command
from opentelemetry import trace

from agents.deps import AgentDeps
from agents.state import RunContext, run_input
from core.errors import InvalidInputError, NotFoundError, OrchestrionError
from core.settings import AgentSettings
from graphs.orchestration import build_graph
from graphs.runs import ERROR, FINAL, INTERRUPTED, PENDING, RUNNING, SUCCESS, RunRecord, RunStore, ThreadRecord, new_id
from observability.propagation import current_trace_id

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("orchestrion.graphs")
GRAPH_NAME = "orchestration"
MAX_QUESTION_CHARS = 8000

T = TypeVar("T")
# (kind, data): "plan", "step", "answer" (from the nodes), "update" (a node finished).
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
        """Run (or go on with) a run in this process until it ends or waits for a decision. For trusted callers
        (this runner, a worker) that hold the run's id; the run's tenant comes from its record."""
        lease = _Lease(self.store, run_id, f"{self.owner}:{uuid.uuid4().hex[:8]}", self.settings.run_lease_s)
        if not await self.store.take_lease(run_id, lease.owner, lease.ttl_s):
            raise OrchestrionError(f"run {run_id} is being executed by another process")
        lease.start()
        settled = False
        try:
            run = await self.store.run(run_id)  # read under the lease: a copy read before it may be stale
            if run.status in FINAL or (run.status == INTERRUPTED and resume is None):
                settled = True
                return run
            done = await self._execute(run, resume, on_event, lease)
            settled = True
            return done
        finally:
            await asyncio.shield(lease.stop())
            if settled:
                await asyncio.shield(self.store.release_lease(run_id, lease.owner))
            else:  # cancelled, lost, or the run's own storage failed: due for recovery at once
                await asyncio.shield(self.store.drop_lease(run_id, lease.owner))

    async def _execute(self, run: RunRecord, resume: Any, on_event: OnEvent | None, lease: _Lease) -> RunRecord:
        config: Any = {
            "configurable": {"thread_id": checkpoint_thread(run.tenant, run.thread_id)},
            "metadata": {"run_id": run.run_id, "graph": GRAPH_NAME},
        }
        context = RunContext(run.tenant, run.run_id, run.thread_id)
        with _tracer.start_as_current_span(
            f"run {GRAPH_NAME}", attributes={"run.id": run.run_id, "thread.id": run.thread_id}
        ) as span:
            try:
                await self.deps.toolbox.ready()  # a process just started: its MCP servers are still connecting
                if resume is not None:  # an approval: kept until the run settles, for a resume after a crash
                    run.resume = resume
                run.status, run.executions = RUNNING, run.executions + 1
                run.started_at = run.started_at or time.time()
                run.trace_id = run.trace_id or current_trace_id()
                await self.store.save_run(run)
                graph_input = await self._input(run, config, resume)
                await lease.guard(self._drive(run, graph_input, config, context, on_event))
                lease.check()
                done = await self._settle(run, config)
            except RunLostError:
                raise
            except OrchestrionError as exc:
                return await self._failed(run, str(exc))
            except Exception as exc:
                log.exception("run %s failed", run.run_id)
                return await self._failed(run, f"internal error ({type(exc).__name__}); trace id {run.trace_id}")
            span.set_attribute("run.status", done.status)
            span.set_attribute("run.plan_source", done.plan_source)
            return done

    async def _input(self, run: RunRecord, config: Any, resume: Any) -> Any:
        snapshot = await self.graph.aget_state(config)
        waiting = any(task.interrupts for task in snapshot.tasks)
        if resume is not None:
            paused = time.time() - (run.interrupted_at or time.time())
            return Command(resume=resume, update={"usage": {"paused_s": paused}})
        if run.resume is not None and waiting:
            return Command(resume=run.resume)  # the approval this run was given before its process stopped
        if (snapshot.values or {}).get("run_id") == run.run_id:
            return None  # this run's input is checkpointed: go on from the last checkpoint
        if await self.store.active_run(run.tenant, run.thread_id) != run.run_id:
            raise OrchestrionError(f"run {run.run_id} no longer holds its thread; it is not started again")
        return run_input(run.question, run.run_id, run.started_at or time.time())

    async def _drive(
        self, run: RunRecord, graph_input: Any, config: Any, context: RunContext, on_event: OnEvent | None
    ) -> None:
        stream: Any = self.graph.astream(
            graph_input, config, context=context, stream_mode=["custom", "updates"], durability="sync"
        )
        async with aclosing(stream):
            async for mode, chunk in stream:
                if on_event is not None:
                    await _forward(on_event, mode, chunk)

    async def _settle(self, run: RunRecord, config: Any) -> RunRecord:
        """Record the outcome: the run first, then its thread, and only then free the thread for the next run
        (a run is never seen finished while another already holds its thread)."""
        snapshot = await self.graph.aget_state(config)
        values: Any = snapshot.values or {}
        interrupts = [{"id": i.id, "value": i.value} for task in snapshot.tasks for i in task.interrupts]
        run.usage = dict(values.get("usage") or {})
        run.plan_source = str((values.get("plan") or {}).get("source", ""))
        thread = await self.store.thread(run.tenant, run.thread_id)
        run.resume = None
        if interrupts:
            run.status, run.interrupts, run.interrupted_at = INTERRUPTED, interrupts, time.time()
            thread.status = INTERRUPTED
        else:
            run.status, run.interrupts, run.finished_at = SUCCESS, [], time.time()
            run.answer, run.citations = values.get("answer"), list(values.get("citations") or [])
            run.stop_reason = values.get("stop_reason") or ""
            thread.status = "idle"
        await self.store.save_run(run)
        await self.store.save_thread(thread)
        if not interrupts:
            await self.store.free_thread(run)
        return run

    async def _failed(self, run: RunRecord, reason: str) -> RunRecord:
        run.status, run.error, run.finished_at, run.resume = ERROR, reason, time.time(), None
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
        """Resume runs whose process died (their lease expired while running), as long as this process lives.
        The resumed runs are this task's children: cancelled with it, they are left due for another process."""
        async with anyio.create_task_group() as group:
            while True:
                try:
                    for run_id in await self.recover_once():
                        group.start_soon(self._resume, run_id)
                except Exception:
                    log.warning("looking for orphaned runs failed", exc_info=True)
                await anyio.sleep(self.settings.recovery_interval_s)

    async def recover_once(self) -> list[str]:
        """The orphaned runs this process should resume now (marked as being resumed here)."""
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
    """A run outlives whoever watches it: a listener's failure (a client gone) is logged, never the run's."""
    try:
        if mode == "custom" and isinstance(chunk, dict) and "event" in chunk:
            await on_event(str(chunk["event"]), chunk)
        elif mode == "updates" and isinstance(chunk, dict):
            for node, update in chunk.items():
                if node != "__interrupt__":
                    await on_event("update", {"node": node, "update": update})
    except Exception:
        log.info("a run event could not be delivered", exc_info=True)


class _Lease:
    """A run's lease while one execution holds it: renewed every third of its life from the moment it is taken;
    lost when renewal is refused or has failed for a whole lease, which cancels the guarded execution."""

    def __init__(self, store: RunStore, run_id: str, owner: str, ttl_s: float) -> None:
        self.store, self.run_id, self.owner, self.ttl_s = store, run_id, owner, ttl_s
        self.lost = False
        self._keeper: asyncio.Task[None] | None = None
        self._guarded: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if await self.store.renew_lease(self.run_id, self.owner, self.ttl_s):
                    renewed = time.monotonic()
                    continue
            except Exception:  # noqa: BLE001 - a Redis blip: try again while the lease may still be ours
                if time.monotonic() - renewed < self.ttl_s:
                    continue
            self.lost = True
            if self._guarded is not None:
                self._guarded.cancel()
            return

    async def guard(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work`, cancelled if the lease is lost meanwhile (then RunLostError)."""
        guarded: asyncio.Future[T] = asyncio.ensure_future(work)
        self._guarded = guarded
        try:
            return await guarded
        except asyncio.CancelledError:
            if self.lost:
                raise RunLostError(f"run {self.run_id}: lease lost; another process resumes it") from None
            raise
        finally:
            self._guarded = None

    def check(self) -> None:
        if self.lost:
            raise RunLostError(f"run {self.run_id}: lease lost; another process resumes it")

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
