"""Runs of the orchestration graph on a tenant's threads: create, execute, approve, cancel, read, recover.

Transport-free: the MCP `ask` tool, the HTTP API and the Celery `runs` task all drive runs through this.
Executing a run takes its lease and renews it while the graph runs; every superstep is checkpointed
before the next starts (durability "sync" unless the run asks otherwise), so a run whose process dies
(its lease expires) is resumed by any other process from its last checkpoint: finished steps are not
run again, and a long tool call in flight is attached to, not sent again (tools/long_calls.py).

One run holds a thread at a time; a run created while another holds it is refused (`reject`) or waits
in the thread's queue and starts when the holder settles (`enqueue`; `interrupt` and `rollback` also
cancel the holder). A cancellation reaches whichever process executes the run (graphs/lease.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

import anyio
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.errors import GraphRecursionError
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from agents.budgets import run_budgets
from agents.deps import AgentDeps
from agents.state import RunContext, run_input
from core.errors import ConflictError, InvalidInputError, NotFoundError, OrchestrionError
from core.settings import AgentSettings
from graphs.events import RunEvents
from graphs.lease import Execution, RunCancelledError, RunLostError
from graphs.orchestration import GRAPH_NAME, build_graph
from graphs.runs import (
    CANCELLED,
    ERROR,
    FINAL,
    INTERRUPTED,
    PENDING,
    RUNNING,
    SUCCESS,
    RunRecord,
    RunStore,
    ThreadRecord,
    new_id,
)
from observability.propagation import current_trace_id, current_traceparent
from observability.run_trace import run_observation

log = logging.getLogger(__name__)
MAX_QUESTION_CHARS = 8000
ASK_STREAM_MODES = ("custom",)
STREAM_MODES = ("values", "updates", "messages", "custom", "debug", "tasks", "checkpoints")

# (mode, data): LangGraph's stream parts as the graph emits them: "custom" carries the agents' own progress
# events ({"event": "plan" | "step" | "answer", ...}).
OnEvent = Callable[[str, Any], Awaitable[None]]
# How to start executing a run elsewhere: (tenant, run id) -> a Celery task, in the tenant's turn (the runs
# queue is fair across tenants: workers/fair_queue.py); None: in this process.
Dispatch = Callable[[str, str], Awaitable[None]]


def checkpoint_thread(tenant: str, thread_id: str) -> str:
    """The checkpointer's thread id: the tenant is part of it, so no tenant can reach another's checkpoints."""
    return f"{tenant}/{thread_id}"


def thread_config(run_or_tenant: RunRecord | str, thread_id: str | None = None) -> Any:
    if isinstance(run_or_tenant, RunRecord):
        return {"configurable": {"thread_id": checkpoint_thread(run_or_tenant.tenant, run_or_tenant.thread_id)}}
    assert thread_id is not None
    return {"configurable": {"thread_id": checkpoint_thread(run_or_tenant, thread_id)}}


def run_config(run: RunRecord) -> Any:
    """The graph's config for one execution: its thread, the run's metadata and what the client's config
    asked (tags, recursion limit); the client's `configurable` reaches the graph only as lowered budgets."""
    config: Any = {**thread_config(run), "metadata": {**run.metadata, "run_id": run.run_id, "graph": GRAPH_NAME}}
    if run.options.get("tags"):
        config["tags"] = list(run.options["tags"])
    if run.options.get("recursion_limit"):
        config["recursion_limit"] = int(run.options["recursion_limit"])
    return config


def _outcome(run: RunRecord) -> dict[str, Any]:
    """What a run's trace shows as its output."""
    return {
        "status": run.status, "answer": run.answer, "citations": [c.get("label") for c in run.citations],
        "stop_reason": run.stop_reason or None, "error": run.error or None,
        "interrupts": [i.get("value") for i in run.interrupts] or None, "usage": run.usage,
    }  # fmt: skip


def _count_run(run: RunRecord, seconds: float, steps: float) -> None:
    """One execution of a run (a resumed run counts again: each is time spent on workers)."""
    from observability.instruments import RUN_DURATION, RUN_INTERRUPTS, RUN_STEPS  # after a worker's setup

    outcome = CANCELLED if run.cancel_reason else run.status
    RUN_DURATION.labels(GRAPH_NAME, outcome).observe(seconds)
    RUN_STEPS.labels(GRAPH_NAME, outcome).observe(steps)
    if run.status == INTERRUPTED and not run.cancel_reason:
        RUN_INTERRUPTS.labels(GRAPH_NAME).inc()


def question_of(graph_input: Any) -> str:
    """The request in a run's input: {"question": ...}, or the last human message of {"messages": [...]}."""
    if not isinstance(graph_input, dict):
        raise InvalidInputError('the input must be an object: {"question": "..."} or {"messages": [...]}')
    if isinstance(graph_input.get("question"), str):
        return str(graph_input["question"])
    messages = graph_input.get("messages") or []
    if not isinstance(messages, list):
        raise InvalidInputError('"messages" must be a list of {"role": ..., "content": ...}')
    for message in reversed(messages):
        role = message.get("role") or message.get("type") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role in ("user", "human") and isinstance(content, str):
            return content
    raise InvalidInputError('the input names no request: give {"question": "..."} or a user message in "messages"')


@dataclass
class Runner:
    deps: AgentDeps
    store: RunStore
    checkpointer: BaseCheckpointSaver[str]
    settings: AgentSettings
    dispatch: Dispatch | None = None
    events: RunEvents | None = None  # the runs' event streams (graphs/events.py) that API clients read
    queued_grace_s: float = 3600.0  # how long a dispatched run may wait in the queue before it counts as lost
    _executing: dict[str, Execution] = field(init=False, default_factory=dict)
    _resuming: set[str] = field(init=False, default_factory=set)
    _background: set[asyncio.Task[Any]] = field(init=False, default_factory=set)

    def __post_init__(self) -> None:
        self.graph: CompiledStateGraph[Any, Any, Any, Any] = build_graph(self.deps).compile(
            checkpointer=self.checkpointer, name=GRAPH_NAME
        )
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

    # creating
    async def ask(
        self, tenant: str, question: str, thread_id: str | None = None, *, on_event: OnEvent | None = None
    ) -> RunRecord:
        run = await self.start(tenant, question, thread_id)
        return await self._execute_or_follow(tenant, run.run_id, on_event=on_event)

    async def _execute_or_follow(self, tenant: str, run_id: str, **how: Any) -> RunRecord:
        """Execute here; if this process loses the run's lease (it stalled), another process resumes the run
        and the caller gets its outcome from there instead of an error."""
        try:
            return await self.execute(run_id, **how)
        except RunLostError:
            log.warning("run %s: lease lost here; waiting for the process that resumes it", run_id)
            return await self.wait(tenant, run_id, timeout_s=self.settings.max_wall_s)

    async def start(self, tenant: str, question: str, thread_id: str | None = None) -> RunRecord:
        """A question on a thread (a new one when none is given), refused while another run holds the thread."""
        run, _ = await self.create(
            tenant,
            thread_id,
            graph_input={"question": question},
            multitask_strategy="reject",
            create_thread=thread_id is None,
        )
        return run

    async def create(
        self,
        tenant: str,
        thread_id: str | None,
        *,
        graph_input: Any = None,
        command: dict[str, Any] | None = None,
        options: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        multitask_strategy: str = "reject",
        assistant_id: str = "",
        create_thread: bool = False,
        temporary: bool = False,
    ) -> tuple[RunRecord, str]:
        """Record a run; (the run, started | queued). A thread id that is not this tenant's is not found, unless
        `create_thread` (then it is made, under that id if one is given)."""
        question = ""
        if graph_input is not None:
            question = question_of(graph_input).strip()
            if not question or len(question) > MAX_QUESTION_CHARS:
                raise InvalidInputError(f"the question must have 1 to {MAX_QUESTION_CHARS} characters")
        elif command is None:
            raise InvalidInputError("a run needs an input or a command")
        thread = await self._thread_for(tenant, thread_id, create_thread)
        if thread.status == INTERRUPTED and graph_input is not None:
            raise InvalidInputError(
                f"thread {thread.thread_id} waits for a decision on run {thread.last_run_id}: resume it with a "
                "command (resume), or approve or reject it"
            )
        run = RunRecord(
            new_id(),
            thread.thread_id,
            tenant,
            question,
            assistant_id=assistant_id,
            input=graph_input,
            command=command,
            options=dict(options or {}),
            metadata=dict(metadata or {}),
            multitask_strategy=multitask_strategy,
            temporary=temporary,
            trace_id=current_trace_id(),
            trace_parent=current_traceparent(),
        )
        outcome, holder = await self.store.create_run(run, self.settings.run_lease_s)
        await self.store.mark_inflight(run)
        if outcome == "queued" and multitask_strategy in ("interrupt", "rollback"):
            await self.store.request_cancel(holder, "interrupt" if multitask_strategy == "interrupt" else "rollback")
        thread.status, thread.last_run_id = "busy", run.run_id
        await self.store.save_thread(thread)
        return run, outcome

    async def _thread_for(self, tenant: str, thread_id: str | None, create: bool) -> ThreadRecord:
        if thread_id is None:
            return await self.store.create_thread(tenant)
        try:
            return await self.store.thread(tenant, thread_id)
        except NotFoundError:
            if not create:
                raise
            return await self.store.create_thread(tenant, thread_id)

    # executing
    async def execute(self, run_id: str, *, resume: Any = None, on_event: OnEvent | None = None) -> RunRecord:
        """Run (or go on with) a run in this process until it ends or waits for a decision. For trusted callers
        (this runner, a worker) that hold the run's id; the run's tenant comes from its record."""
        execution = Execution(self.store, run_id, f"{self.owner}:{uuid.uuid4().hex[:8]}", self.settings.run_lease_s)
        if not await self.store.take_lease(run_id, execution.owner, execution.ttl_s):
            raise OrchestrionError(f"run {run_id} is being executed by another process")
        execution.start()
        self._executing[run_id] = execution
        settled = False
        try:
            run = await self.store.run(run_id)  # read under the lease: a copy read before it may be stale
            if run.status in FINAL or (run.status == INTERRUPTED and resume is None):
                settled = True
                return run
            action = await self.store.cancel_requested(run_id)
            if action:
                execution.cancel(action)
            done = await self._execute(run, resume, on_event, execution)
            settled = True
            return done
        finally:
            self._executing.pop(run_id, None)
            await asyncio.shield(execution.stop())
            if settled:
                await asyncio.shield(self.store.release_lease(run_id, execution.owner))
            else:  # cancelled, lost, or the run's own storage failed: due for recovery at once
                await asyncio.shield(self.store.drop_lease(run_id, execution.owner))

    async def _execute(self, run: RunRecord, resume: Any, on_event: OnEvent | None, execution: Execution) -> RunRecord:
        config = run_config(run)
        context = RunContext(
            run.tenant, run.run_id, run.thread_id, run_budgets(self.settings, run.options.get("budgets"))
        )
        with run_observation(
            graph=GRAPH_NAME, run_id=run.run_id, thread_id=run.thread_id, tenant=run.tenant, metadata=run.metadata,
            question=run.question, traceparent=run.trace_parent, execution=run.executions + 1,
        ) as observed:  # fmt: skip
            began, steps_before = time.perf_counter(), run.usage.get("steps", 0)
            try:
                await self.deps.toolbox.ready()  # a process just started: its MCP servers are still connecting
                if resume is not None:  # an approval: kept until the run settles, for a resume after a crash
                    run.resume = resume
                run.status, run.executions = RUNNING, run.executions + 1
                run.started_at = run.started_at or time.time()
                run.trace_id = run.trace_id or current_trace_id()
                run.trace_parent = run.trace_parent or current_traceparent()
                await self.store.save_run(run)
                graph_input = await self._input(run, config, resume)
                sink = self._sink(run, on_event)
                await execution.guard(self._drive(run, graph_input, config, context, sink))
                execution.check()
                done = await self._settle(run, config)
            except RunLostError:
                observed.observation.failed("the run's lease was lost: another process resumes it")
                raise
            except RunCancelledError as cancelled:
                done = await self._cancelled(run, cancelled.action)
            except GraphRecursionError:
                limit = config.get("recursion_limit")
                done = await self._failed(
                    run, f"the run reached its recursion limit ({limit or 'default'} graph steps)"
                )
            except OrchestrionError as exc:
                done = await self._failed(run, str(exc))
            except Exception:
                log.exception("run %s failed", run.run_id)
                done = await self._failed(run, f"internal error; trace id {run.trace_id}")
            if done.status == ERROR:
                observed.observation.failed(done.error)
            observed.observation.attributes(**{"run.status": done.status, "run.plan_source": done.plan_source})
            observed.finish(done.status, _outcome(done))
            _count_run(done, time.perf_counter() - began, done.usage.get("steps", 0) - steps_before)
            return done

    async def _input(self, run: RunRecord, config: Any, resume: Any) -> Any:
        snapshot = await self.graph.aget_state(config)
        waiting = any(task.interrupts for task in snapshot.tasks)
        if resume is not None:
            paused = time.time() - (run.interrupted_at or time.time())
            return Command(resume=resume, update={"usage": {"paused_s": paused}})
        if run.resume is not None and waiting:
            return Command(resume=run.resume)  # the approval this run was given before its process stopped
        if (snapshot.values or {}).get("run_id") == run.run_id or (run.executions > 1 and run.command is not None):
            return None  # this run's input is checkpointed: go on from the last checkpoint
        if await self.store.active_run(run.tenant, run.thread_id) != run.run_id:
            raise OrchestrionError(f"run {run.run_id} no longer holds its thread; it is not started again")
        if run.command == {}:
            return None  # go on from the checkpoint (after interrupt_before/after)
        if run.command is not None:
            return Command(**{k: v for k, v in run.command.items() if k in ("resume", "update", "goto")})
        return run_input(run.question, run.run_id, run.started_at or time.time())

    async def _drive(
        self, run: RunRecord, graph_input: Any, config: Any, context: RunContext, on_event: OnEvent | None
    ) -> None:
        options = run.options
        wanted = options.get("stream_mode") or ASK_STREAM_MODES
        modes: Any = [m for m in wanted if m in STREAM_MODES] or list(ASK_STREAM_MODES)
        arguments: Any = {
            "context": context,
            "stream_mode": modes,
            "durability": options.get("durability") or "sync",
            "interrupt_before": options.get("interrupt_before"),
            "interrupt_after": options.get("interrupt_after"),
            "subgraphs": False,
        }
        if "events" not in wanted:
            stream: Any = self.graph.astream(graph_input, config, **arguments)
            async with aclosing(stream):
                async for mode, chunk in stream:
                    if on_event is not None:
                        await _forward(on_event, mode, chunk)
            return
        # LangChain's event stream: every event as `events`, and the graph's own stream parts (the root's
        # on_chain_stream chunks) as their modes, from one execution.
        events: Any = self.graph.astream_events(graph_input, config, version="v2", **arguments)
        async with aclosing(events):
            async for event in events:
                if on_event is None:
                    continue
                await _forward(on_event, "events", event)
                if event["event"] == "on_chain_stream" and not event.get("parent_ids"):
                    mode, chunk = event["data"]["chunk"]
                    await _forward(on_event, mode, chunk)

    def _sink(self, run: RunRecord, on_event: OnEvent | None) -> OnEvent | None:
        """Where the graph's stream parts go: the run's event stream (for API clients) and the caller's listener."""
        events = self.events
        if events is None:
            return on_event

        # Stream parts that carry the run's config (messages' metadata, debug, checkpoints) name the
        # checkpointer's thread id, which holds the tenant: clients see their own thread id instead.
        private = checkpoint_thread(run.tenant, run.thread_id)

        async def both(mode: str, chunk: Any) -> None:
            await events.append(run.run_id, mode, chunk, (private, run.thread_id))
            if on_event is not None:
                await on_event(mode, chunk)

        return both

    async def _end(self, run: RunRecord) -> None:
        """After the outcome is recorded: an `error` event for a failed run, then the stream's `end`."""
        await self.store.unmark_inflight(run)
        if self.events is None:
            return
        try:
            if run.status == ERROR:
                await self.events.append(run.run_id, "error", {"error": "RunError", "message": run.error})
            await self.events.end(run.run_id, run.status)
        except Exception:
            log.warning("could not end the event stream of run %s", run.run_id, exc_info=True)

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
        if interrupts or snapshot.next:  # waiting for a decision, or stopped by interrupt_before/after
            run.status, run.interrupts, run.interrupted_at = INTERRUPTED, interrupts, time.time()
            thread.status = INTERRUPTED
        else:
            run.status, run.interrupts, run.finished_at = SUCCESS, [], time.time()
            run.answer, run.citations = values.get("answer"), list(values.get("citations") or [])
            run.stop_reason = values.get("stop_reason") or ""
            thread.status = "idle"
        await self.store.save_run(run)
        await self.store.save_thread(thread)
        await self._end(run)
        await self._release(run)
        return run

    async def _failed(self, run: RunRecord, reason: str) -> RunRecord:
        run.status, run.error, run.finished_at, run.resume = ERROR, reason, time.time(), None
        await self.store.save_run(run)
        try:
            thread = await self.store.thread(run.tenant, run.thread_id)
            thread.status = "error"
            await self.store.save_thread(thread)
        finally:
            await self._end(run)
            await self._release(run)
        return run

    async def _cancelled(self, run: RunRecord, action: str) -> RunRecord:
        """A client cancelled the run: interrupted with its state kept, or rolled back to before it began."""
        run.status, run.cancel_reason, run.finished_at, run.resume = INTERRUPTED, CANCELLED, time.time(), None
        thread = await self.store.thread(run.tenant, run.thread_id)
        if action == "rollback":
            await self._roll_back(run)
            await self.store.delete_run(run)
        else:
            await self.store.save_run(run)
        thread.status = "idle"
        await self.store.save_thread(thread)
        await self._end(run)
        await self._release(run)
        return run

    async def _roll_back(self, run: RunRecord) -> None:
        """Make the thread's state what it was before the run: the last checkpoint written before its input."""
        async for snapshot in self.graph.aget_state_history(thread_config(run)):
            if (snapshot.metadata or {}).get("run_id") != run.run_id:
                # a copy of that checkpoint as the newest: no reducer runs again, nothing is pending
                await self.graph.aupdate_state(snapshot.config, None, as_node="__copy__")
                return
        await self.checkpointer.adelete_thread(checkpoint_thread(run.tenant, run.thread_id))  # its first run

    async def _release(self, run: RunRecord) -> None:
        """Free the run's thread; the run queued next on it starts (dispatched, or here)."""
        following = await self.store.free_thread(run, self.settings.run_lease_s)
        if following is not None:
            await self._start(run.tenant, following)  # the same thread: the same tenant
        elif run.temporary and (run.status != INTERRUPTED or run.cancel_reason):
            await self.delete_thread(run.tenant, run.thread_id)  # a stateless run: its thread lives as long as it

    async def launch(self, run: RunRecord) -> None:
        """Start executing a run that holds its thread: on a worker (dispatch), or in this process."""
        await self._start(run.tenant, run.run_id)

    async def _start(self, tenant: str, run_id: str) -> None:
        if self.dispatch is not None:
            await self.dispatch(tenant, run_id)
            # In the queue now, which redelivers it if a worker dies holding it: not an orphan while it waits.
            await self.store.defer(run_id, self.queued_grace_s)
            return
        task = asyncio.create_task(self._resume(run_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # decisions and cancellation
    async def approve(
        self, tenant: str, run_id: str, approved: bool, reason: str = "", *, on_event: OnEvent | None = None
    ) -> RunRecord:
        """Resume a run waiting for a decision: every pending approval gets this one, with the arguments it
        showed, so exactly what was approved runs."""
        run = await self.store.run_of(tenant, run_id)
        if run.status != INTERRUPTED or not run.interrupts or run.cancel_reason:
            raise InvalidInputError(f"run {run_id} is not waiting for a decision (it is {run.status})")
        holder = await self.store.claim_thread(run)
        if holder != run.run_id:
            raise InvalidInputError(f"thread {run.thread_id} went on with run {holder}: this decision is too late")
        decisions = {
            i["id"]: {
                "decision": "approve" if approved else "reject",
                "reason": reason,
                "arguments": (i.get("value") or {}).get("arguments"),
            }
            for i in run.interrupts
        }
        return await self._execute_or_follow(tenant, run_id, resume=decisions, on_event=on_event)

    async def cancel(self, tenant: str, run_id: str, action: str = "interrupt", wait: bool = False) -> RunRecord:
        """Ask the run to stop (a queued run never starts); with `wait`, return once it has."""
        if action not in ("interrupt", "rollback"):
            raise InvalidInputError(f"unknown cancel action {action!r}: use interrupt or rollback")
        run = await self.store.run_of(tenant, run_id)
        if run.status in (*FINAL, INTERRUPTED):
            return run
        if await self.store.unqueue(run):  # still waiting behind another run: it just never starts
            run.status, run.cancel_reason, run.finished_at = INTERRUPTED, CANCELLED, time.time()
            if action == "rollback":
                await self.store.delete_run(run)
            else:
                await self.store.save_run(run)
            await self._end(run)
            return run
        await self.store.request_cancel(run_id, action)
        if run_id in self._executing:
            self._executing[run_id].cancel(action)
        return await self.wait(tenant, run_id) if wait else run

    async def wait(self, tenant: str, run_id: str, timeout_s: float | None = None) -> RunRecord:
        """The run once it has ended or waits for a decision (polling its record; a rolled-back run is gone)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        delay = 0.05
        while True:
            run = await self.store.run_of(tenant, run_id)
            if run.status in (*FINAL, INTERRUPTED):
                return run
            if deadline is not None and time.monotonic() > deadline:
                return run
            await anyio.sleep(delay)
            delay = min(0.5, delay * 2)

    async def listen_for_cancellations(self) -> None:
        """Cancellations asked anywhere reach the execution in this process (a worker, an API server). Redis
        going away only pauses this: what was published meanwhile reaches the run by its flag (graphs/lease.py)."""
        while True:
            try:
                async for run_id, action in self.store.cancellations():
                    execution = self._executing.get(run_id)
                    if execution is not None:
                        log.info("cancelling run %s (%s) as asked", run_id, action)
                        execution.cancel(action)
            except Exception:
                log.warning("the cancellation channel failed; listening again", exc_info=True)
            await anyio.sleep(1)

    # reading
    async def get_run(self, tenant: str, run_id: str) -> RunRecord:
        return await self.store.run_of(tenant, run_id)

    async def list_threads(self, tenant: str, limit: int = 20, offset: int = 0) -> list[ThreadRecord]:
        return await self.store.threads(tenant, limit, offset)

    async def delete_thread(self, tenant: str, thread_id: str) -> None:
        """The thread, its runs' index and its checkpoints; refused while a run holds it."""
        thread = await self.store.thread(tenant, thread_id)
        holder = await self.store.active_run(tenant, thread_id)
        if holder is not None:
            raise ConflictError(f"thread {thread_id} is busy with run {holder}: cancel it first")
        await self.store.delete_thread(thread)
        await self.checkpointer.adelete_thread(checkpoint_thread(tenant, thread_id))

    async def thread_state(self, tenant: str, thread_id: str) -> dict[str, Any]:
        await self.store.thread(tenant, thread_id)  # NotFoundError for another tenant's
        snapshot = await self.graph.aget_state(thread_config(tenant, thread_id))
        return dict(snapshot.values or {})

    # recovery
    async def recover_forever(self) -> None:
        """Resume runs whose process died (their lease expired while running), as long as this process lives,
        and pass on cancellations. The resumed runs are this task's children: cancelled with it, they are left
        due for another process."""
        async with anyio.create_task_group() as group:
            group.start_soon(self.listen_for_cancellations)
            while True:
                try:
                    for tenant, run_id in await self.recover_once():
                        if self.dispatch is not None:  # to the runs queue, like any run
                            await self.dispatch(tenant, run_id)
                            self._resuming.discard(run_id)
                        else:
                            group.start_soon(self._resume, run_id)
                except Exception:
                    log.warning("looking for orphaned runs failed", exc_info=True)
                await anyio.sleep(self.settings.recovery_interval_s)

    async def recover_once(self) -> list[tuple[str, str]]:
        """The orphaned runs this process should resume now, (tenant, run id) (marked as being resumed here)."""
        resumed = []
        for run_id in await self.store.expired_leases():
            if run_id in self._resuming or run_id in self._executing:
                continue
            try:
                run = await self.store.run(run_id)
            except NotFoundError:
                await self.store.forget_lease(run_id)
                continue
            if run.status not in (PENDING, RUNNING):
                await self.store.forget_lease(run_id)
                if await self.store.active_run(run.tenant, run.thread_id) == run_id and not run.interrupts:
                    # settled, but its process died before it let go of the thread: end it properly now
                    log.info("run %s settled without freeing its thread; freeing it", run_id)
                    await self._end(run)
                    await self._release(run)
                continue
            if not await self.store.claim_orphan(run_id, self.settings.run_lease_s):
                continue  # another process claimed it first
            self._resuming.add(run_id)
            resumed.append((run.tenant, run_id))
        return resumed

    async def _resume(self, run_id: str) -> None:
        try:
            log.info("executing run %s (orphaned, or next on its thread)", run_id)
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
        await on_event(mode, chunk)
    except Exception:
        log.info("a run event could not be delivered", exc_info=True)
