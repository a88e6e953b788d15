"""Runs: background, streamed (SSE) and waited for, on a thread or stateless; joined, listed, cancelled, deleted.

A run is admitted (api/agent/admission.py), recorded and claimed on its thread by the runner, and executed by
a Celery worker on the `runs` queue; the worker appends its events to the run's Redis Stream, which every
API replica reads (api/agent/hub.py). So any replica streams, joins or cancels any run, and a client that
reconnects (`Location`, `Last-Event-ID`) continues exactly where it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response, StreamingResponse
from redis.exceptions import RedisError

from agents.budgets import requested_budgets, server_budgets
from api.agent.assistants import resolve_assistant
from api.agent.deps import Agent, AgentApi
from api.agent.hub import START
from api.agent.idempotency import Idempotency
from api.agent.schemas import RunCreate
from api.agent.views import json_response, public, run_view
from api.auth import Tenant
from core.errors import ConflictError, InvalidInputError, NotFoundError
from graphs.events import END, sse_comment, sse_event
from graphs.runner import thread_config
from graphs.runs import FINAL, PENDING, RUNNING, RunRecord
from observability.instruments import SSE_STREAMS

log = logging.getLogger(__name__)
router = APIRouter(tags=["runs"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]
# The SDK's names for LangGraph's stream modes: `messages-tuple` is LangGraph's `messages` ([chunk, metadata]).
MODES = {"values": "values", "updates": "updates", "messages-tuple": "messages", "custom": "custom",
         "debug": "debug", "tasks": "tasks", "checkpoints": "checkpoints", "events": "events"}  # fmt: skip
BACKGROUND_MODES = ["values", "updates", "messages", "custom"]
_cancellations: set[asyncio.Task[Any]] = set()


def graph_modes(body: RunCreate, background: bool) -> list[str]:
    if background and "stream_mode" not in body.model_fields_set:
        return list(BACKGROUND_MODES)  # joined later with any of them
    modes = []
    for mode in body.modes():
        if mode == "messages":
            raise InvalidInputError('stream mode "messages" is not served: use "messages-tuple" ([chunk, metadata])')
        modes.append(MODES[mode])
    return list(dict.fromkeys(["values", *modes]))  # values always: /wait and /join answer with the last ones


def requested(body: RunCreate) -> set[str]:
    """The modes a streamed run's client asked for (values is recorded for /wait, not sent unasked)."""
    return {MODES[m] for m in body.modes() if m in MODES}


def _refuse_unsupported(body: RunCreate) -> None:
    if body.webhook:
        raise InvalidInputError("webhooks are not supported: follow the run's stream or join it")
    if body.after_seconds:
        raise InvalidInputError("after_seconds (delayed runs) is not supported")
    if body.checkpoint_id or body.checkpoint:
        raise InvalidInputError("runs from an earlier checkpoint are not supported: copy the thread instead")
    if body.context:
        raise InvalidInputError(
            "context is not accepted: the orchestration graph's context (tenant, run, thread) comes from the "
            "credentials and the route; per-run budgets go in config.configurable (max_steps, max_tokens, ...)"
        )


def _config_options(agent: AgentApi, body: RunCreate) -> dict[str, Any]:
    config = body.config
    if config is None:
        return {}
    options: dict[str, Any] = {}
    budgets = requested_budgets(config.configurable, server_budgets(agent.runner.settings))
    if budgets:
        options["budgets"] = budgets
    if config.tags:
        options["tags"] = config.tags
    if config.recursion_limit:
        options["recursion_limit"] = config.recursion_limit
    return options


async def start_run(
    agent: AgentApi, caller: str, thread_id: str | None, body: RunCreate, background: bool
) -> RunRecord:
    resolve_assistant(body.assistant_id)
    _refuse_unsupported(body)
    stateless = thread_id is None
    options: dict[str, Any] = {
        "stream_mode": graph_modes(body, background),
        "interrupt_before": body.interrupt_before,
        "interrupt_after": body.interrupt_after,
        "durability": body.durability,
        "on_disconnect": body.on_disconnect,
        "stream_resumable": body.stream_resumable,
        **_config_options(agent, body),
    }
    command = body.command.model_dump(exclude_none=True) if body.command is not None else None
    if body.input is None and command is None:
        command = {}  # go on from the thread's checkpoint (after interrupt_before/after)
    await agent.admission.admit(caller)
    run, outcome = await agent.runner.create(
        caller,
        thread_id,
        graph_input=body.input,
        command=command,
        options=options,
        metadata={**(body.config.metadata if body.config else {}), **body.metadata},
        multitask_strategy=body.multitask_strategy,
        assistant_id=resolve_assistant(body.assistant_id),
        create_thread=stateless or body.if_not_exists == "create",
        temporary=stateless and body.on_completion == "delete",
    )
    if outcome == "started":
        try:
            await agent.runner.launch(run)
        except Exception:  # recorded and due: lease recovery sends it once its start grace has passed
            log.warning("could not send run %s to the queue now; it is sent by recovery", run.run_id, exc_info=True)
    return run


def _fingerprint(request: Request, body: bytes) -> str:
    return Idempotency.fingerprint(request.method, request.url.path, body)


async def claimed_run(
    agent: AgentApi, request: Request, caller: str, key: str | None, make: Callable[[], Awaitable[RunRecord]]
) -> tuple[RunRecord, dict[str, Any]]:
    """The run this request makes, or (same Idempotency-Key and body) the one its first copy made; and the
    stored record of that first copy."""
    if key is None:
        return await make(), {}
    claim = await agent.idempotency.claim(caller, key, _fingerprint(request, await request.body()))
    if not claim.first:
        return await agent.runner.store.run_of(caller, claim.record["run_id"]), claim.record
    try:
        run = await make()
    except BaseException:
        await asyncio.shield(agent.idempotency.release(claim))
        raise
    record = {"run_id": run.run_id, "body": orjson.dumps(run_view(run)).decode()}
    await asyncio.shield(agent.idempotency.record(claim, **record))  # the run exists: so must its record
    return run, record


async def idempotent_json(
    agent: AgentApi, request: Request, caller: str, key: str | None, make: Callable[[], Awaitable[Response]]
) -> Response:
    """A JSON answer made once per Idempotency-Key and body; copies get the stored status and body."""
    if key is None:
        return await make()
    claim = await agent.idempotency.claim(caller, key, _fingerprint(request, await request.body()))
    if not claim.first:
        return Response(
            claim.record["body"].encode(), claim.record["status"], media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )  # fmt: skip
    try:
        response = await make()
    except BaseException:
        await asyncio.shield(agent.idempotency.release(claim))
        raise
    await agent.idempotency.record(claim, status=response.status_code, body=bytes(response.body).decode())
    return response


def _paths(run: RunRecord) -> tuple[str, str]:
    base = f"/threads/{quote(run.thread_id, safe='')}/runs/{run.run_id}"
    return base, f"{base}/stream"


# streaming
def stream_response(
    agent: AgentApi,
    run: RunRecord,
    after: str = START,
    only: set[str] | None = None,
    cancel_on_disconnect: bool = False,
) -> StreamingResponse:
    run_path, stream_path = _paths(run)
    headers = {"Location": stream_path, "Content-Location": run_path, "Cache-Control": "no-store",
               "X-Accel-Buffering": "no"}  # fmt: skip
    return StreamingResponse(
        _sse(agent, run, after, only, cancel_on_disconnect), media_type="text/event-stream", headers=headers
    )


async def _sse(
    agent: AgentApi, run: RunRecord, after: str, only: set[str] | None, cancel_on_disconnect: bool
) -> AsyncIterator[bytes]:
    metadata = {"run_id": run.run_id, "thread_id": run.thread_id, "attempt": 1, "trace_id": run.trace_id}
    SSE_STREAMS.inc()
    try:
        yield sse_event("metadata", metadata)
        async for batch in agent.hub.follow(run.run_id, after, agent.settings.heartbeat_s):
            if batch is None:  # quiet: a heartbeat keeps proxies from closing the stream
                yield sse_comment("heartbeat")
                try:
                    status = await _settled(agent, run)
                except RedisError:  # a busy pool or a blip: the next heartbeat looks again, the stream stays
                    log.debug("status check of run %s failed on a heartbeat", run.run_id, exc_info=True)
                    continue
                if status is not None:  # settled, and nothing came after: its `end` is lost or already read
                    yield sse_event(END, {"run_id": run.run_id, "status": status})
                    return
                continue
            wanted = [e for e in batch if only is None or e.event in only or e.event in (END, "error")]
            if wanted:  # one write for the batch: per-write overhead dominated fan-out
                yield wanted[0].sse() if len(wanted) == 1 else b"".join(e.sse() for e in wanted)
    except (asyncio.CancelledError, GeneratorExit):  # the client went away (heartbeats never look like that)
        if cancel_on_disconnect:
            task = asyncio.create_task(_cancel_quietly(agent, run))
            _cancellations.add(task)
            task.add_done_callback(_cancellations.discard)
        raise
    finally:
        SSE_STREAMS.dec()
    # Any other failure (Redis gone) cuts the connection on purpose: the SDK reconnects with Last-Event-ID and
    # misses nothing, where an `error` event would end its stream.


async def _settled(agent: AgentApi, run: RunRecord) -> str | None:
    """The run's status once it no longer runs (`gone` when its record is), else None; read once a second per
    run however many clients follow it."""

    async def fetch() -> str | None:
        try:
            current = await agent.runner.store.run(run.run_id)
        except NotFoundError:
            return "gone"
        return None if current.status in (PENDING, RUNNING) else current.status

    return await agent.hub.shared(f"settled:{run.run_id}", fetch)


async def _cancel_quietly(agent: AgentApi, run: RunRecord) -> None:
    try:
        log.info("client of run %s disconnected (on_disconnect=cancel): cancelling it", run.run_id)
        await agent.runner.cancel(run.tenant, run.run_id)
    except Exception:
        log.warning("could not cancel run %s after its client left", run.run_id, exc_info=True)


# waiting
async def _result(agent: AgentApi, run: RunRecord, tick: Callable[[], Awaitable[None]] | None = None) -> bytes:
    """The run's final values once it has ended (with `__interrupt__` when it waits for a decision, or
    `__error__` when it failed), as JSON."""
    events = agent.hub.events
    newest = await events.newest(run.run_id)
    if newest is None or newest.event != END:
        async for batch in agent.hub.follow(run.run_id, newest.id if newest else START, agent.settings.heartbeat_s):
            if batch is None:
                if tick is not None:
                    await tick()
                if await _settled(agent, run) is not None:
                    break
    last_values = await events.last(run.run_id, "values")
    try:
        done = await agent.runner.store.run(run.run_id)
    except NotFoundError:  # rolled back: its thread is as before it
        return last_values.data if last_values else b"{}"
    if last_values is not None:
        values = last_values.data
    else:  # the stream expired: the thread's state, when the run is still its last
        values = await _state_values(agent, done)
    if done.status == "error":
        return orjson.dumps({"__error__": {"error": "RunError", "message": done.error}})
    if done.interrupts:
        merged = orjson.loads(values) if values else {}
        merged["__interrupt__"] = done.interrupts
        return public(merged, done.tenant, done.thread_id)
    return values


async def _state_values(agent: AgentApi, run: RunRecord) -> bytes:
    try:
        thread = await agent.runner.store.thread(run.tenant, run.thread_id)
    except NotFoundError:
        return b"{}"
    if thread.last_run_id != run.run_id:
        return b"{}"
    snapshot = await agent.runner.graph.aget_state(thread_config(run))
    return public(snapshot.values or {}, run.tenant, run.thread_id)


def wait_response(agent: AgentApi, run: RunRecord) -> StreamingResponse:
    """The result as JSON, after blank lines while the run goes on (JSON allows leading whitespace): the
    connection stays alive through proxies, and the SDK reconnects to `Location` (the join) if it drops."""
    run_path, _ = _paths(run)
    queue: asyncio.Queue[bytes | None] = asyncio.Queue()

    async def body() -> AsyncIterator[bytes]:
        async def tick() -> None:
            await queue.put(b"\n")

        async def produce() -> None:
            try:
                await queue.put(await _result(agent, run, tick))
            finally:
                await queue.put(None)

        task = asyncio.create_task(produce())
        try:
            while (chunk := await queue.get()) is not None:
                yield chunk
            await task  # its failure cuts the connection: the SDK reconnects to the join in `Location`
        finally:
            task.cancel()

    headers = {"Location": f"{run_path}/join", "Content-Location": run_path}
    return StreamingResponse(body(), media_type="application/json", headers=headers)


# routes: creating
async def _background(agent: AgentApi, request: Request, caller: str, key: str | None, thread_id: str | None,
                      body: RunCreate) -> Response:  # fmt: skip
    run, record = await claimed_run(
        agent, request, caller, key, lambda: start_run(agent, caller, thread_id, body, True)
    )
    content = record["body"].encode() if record else orjson.dumps(run_view(run))
    return Response(content, media_type="application/json", headers={"Content-Location": _paths(run)[0]})


async def _streamed(agent: AgentApi, request: Request, caller: str, key: str | None, thread_id: str | None,
                    body: RunCreate) -> Response:  # fmt: skip
    run, _ = await claimed_run(agent, request, caller, key, lambda: start_run(agent, caller, thread_id, body, False))
    return stream_response(agent, run, only=requested(body), cancel_on_disconnect=body.on_disconnect == "cancel")


async def _waited(agent: AgentApi, request: Request, caller: str, key: str | None, thread_id: str | None,
                  body: RunCreate) -> Response:  # fmt: skip
    run, _ = await claimed_run(agent, request, caller, key, lambda: start_run(agent, caller, thread_id, body, False))
    return wait_response(agent, run)


@router.post("/threads/{thread_id}/runs", summary="Start a run in the background")
async def create_run(
    thread_id: str,
    body: RunCreate,
    request: Request,
    agent: Agent,
    caller: Tenant,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _background(agent, request, caller, idempotency_key, thread_id, body)


@router.post("/threads/{thread_id}/runs/stream", summary="Start a run and stream its events (SSE)")
async def stream_run(
    thread_id: str,
    body: RunCreate,
    request: Request,
    agent: Agent,
    caller: Tenant,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _streamed(agent, request, caller, idempotency_key, thread_id, body)


@router.post("/threads/{thread_id}/runs/wait", summary="Start a run and answer with its final values")
async def wait_run(
    thread_id: str,
    body: RunCreate,
    request: Request,
    agent: Agent,
    caller: Tenant,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    return await _waited(agent, request, caller, idempotency_key, thread_id, body)


@router.post("/runs", summary="Start a stateless run in the background (its thread is deleted when it ends)")
async def create_stateless_run(
    body: RunCreate, request: Request, agent: Agent, caller: Tenant, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _background(agent, request, caller, idempotency_key, None, body)


@router.post("/runs/stream", summary="Start a stateless run and stream its events (SSE)")
async def stream_stateless_run(
    body: RunCreate, request: Request, agent: Agent, caller: Tenant, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _streamed(agent, request, caller, idempotency_key, None, body)


@router.post("/runs/wait", summary="Start a stateless run and answer with its final values")
async def wait_stateless_run(
    body: RunCreate, request: Request, agent: Agent, caller: Tenant, idempotency_key: IdempotencyKey = None
) -> Response:
    return await _waited(agent, request, caller, idempotency_key, None, body)


# routes: reading and controlling
async def _run_on(agent: AgentApi, caller: str, thread_id: str, run_id: str) -> RunRecord:
    run = await agent.runner.store.run_of(caller, run_id)
    if run.thread_id != thread_id:
        raise NotFoundError(f"no run {run_id!r} on thread {thread_id!r}")
    return run


@router.get("/threads/{thread_id}/runs", summary="The thread's runs, newest first")
async def list_runs(
    thread_id: str,
    agent: Agent,
    caller: Tenant,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: str | None = None,
) -> Response:
    await agent.runner.store.thread(caller, thread_id)
    runs = await agent.runner.store.thread_runs(caller, thread_id, limit=offset + limit if status is None else 1000)
    if status is not None:
        runs = [r for r in runs if r.status == status]
    return json_response([run_view(r) for r in runs[offset : offset + limit]])


@router.get("/threads/{thread_id}/runs/{run_id}", summary="A run")
async def get_run(thread_id: str, run_id: str, agent: Agent, caller: Tenant) -> Response:
    return json_response(run_view(await _run_on(agent, caller, thread_id, run_id)))


@router.get("/threads/{thread_id}/runs/{run_id}/join", summary="Wait for a run; its final values")
async def join_run(thread_id: str, run_id: str, agent: Agent, caller: Tenant) -> Response:
    return wait_response(agent, await _run_on(agent, caller, thread_id, run_id))


@router.get("/threads/{thread_id}/runs/{run_id}/stream", summary="Follow a run's events (SSE), or go on after one")
async def join_stream(
    thread_id: str,
    run_id: str,
    agent: Agent,
    caller: Tenant,
    last_event_id: LastEventId = None,
    stream_mode: Annotated[list[str] | None, Query()] = None,
    cancel_on_disconnect: bool = False,
) -> Response:
    run = await _run_on(agent, caller, thread_id, run_id)
    only = None
    stream_mode = [m for m in stream_mode or [] if m]  # the SDK sends an empty value for "all of them"
    if stream_mode:
        unknown = [m for m in stream_mode if m not in MODES]
        if unknown:
            raise InvalidInputError(f"unknown stream modes {unknown}: use some of {sorted(MODES)}")
        only = {MODES[m] for m in stream_mode}
    after = last_event_id or START
    if after != START and not _valid_entry_id(after):
        raise InvalidInputError(f"Last-Event-ID {after!r} is not an event id of this stream (like 1712345678901-0)")
    return stream_response(agent, run, after, only, cancel_on_disconnect)


def _valid_entry_id(value: str) -> bool:
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (seq == "" or seq.isdigit())


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", summary="Cancel a run (interrupt, or roll back)")
async def cancel_run(
    thread_id: str,
    run_id: str,
    agent: Agent,
    caller: Tenant,
    wait: bool = False,
    action: Annotated[str, Query(pattern="^(interrupt|rollback)$")] = "interrupt",
) -> Response:
    run = await _run_on(agent, caller, thread_id, run_id)
    if run.status in FINAL:
        raise ConflictError(f"run {run_id} has already ended ({run.status})")
    await agent.runner.cancel(caller, run_id, action)
    if not wait:
        return Response(status_code=202)
    await _result(agent, run)  # returns at the run's end
    try:
        return json_response(run_view(await agent.runner.store.run(run_id)))
    except NotFoundError:  # rolled back: the run is gone with what it did
        return Response(status_code=204)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, summary="Delete a run that has ended")
async def delete_run(thread_id: str, run_id: str, agent: Agent, caller: Tenant) -> Response:
    run = await _run_on(agent, caller, thread_id, run_id)
    if run.status in (PENDING, RUNNING):
        raise ConflictError(f"run {run_id} is {run.status}: cancel it first")
    await agent.runner.store.delete_run(run)
    return Response(status_code=204)
