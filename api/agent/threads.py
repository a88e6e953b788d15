"""Threads: a tenant's conversations, their state (checkpointed), history, updates and copies."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import Response

from api.agent.deps import Agent
from api.agent.runs import idempotent_json
from api.agent.schemas import HistoryRequest, StateUpdate, ThreadCreate, ThreadPatch, ThreadSearch
from api.agent.views import json_response, public, thread_view
from api.auth import Tenant
from core.errors import ConflictError, NotFoundError
from graphs import threads as thread_state
from graphs.runner import Runner
from graphs.runs import ThreadRecord

router = APIRouter(tags=["threads"])
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=200)]
SCAN = 1000  # threads looked at by one search (newest first)


async def full_view(runner: Runner, thread: ThreadRecord) -> dict[str, Any]:
    snapshot = await thread_state.snapshot(runner, thread.tenant, thread.thread_id)
    interrupts: dict[str, list[dict[str, Any]]] = {}
    for task in snapshot.tasks:
        if task.interrupts:
            interrupts[task.id] = [{"value": i.value, "id": i.id} for i in task.interrupts]
    return thread_view(thread, snapshot.values or {}, interrupts)


def thread_response(view: dict[str, Any], tenant: str, status: int = 200) -> Response:
    return Response(public(view, tenant, view["thread_id"]), status_code=status, media_type="application/json")


@router.post("/threads", summary="Create a thread")
async def create_thread(
    body: ThreadCreate, request: Request, agent: Agent, caller: Tenant, idempotency_key: IdempotencyKey = None
) -> Response:
    async def make() -> Response:
        store = agent.runner.store
        if body.thread_id is not None:
            try:
                existing = await store.thread(caller, body.thread_id)
            except NotFoundError:
                pass
            else:
                if body.if_exists == "raise":
                    raise ConflictError(f"thread {body.thread_id} exists (if_exists raise)")
                return thread_response(await full_view(agent.runner, existing), caller)
        thread = await store.create_thread(caller, body.thread_id, body.metadata)
        return thread_response(thread_view(thread), caller)

    return await idempotent_json(agent, request, caller, idempotency_key, make)


@router.get("/threads/{thread_id}", summary="A thread, with its current values and interrupts")
async def get_thread(thread_id: str, agent: Agent, caller: Tenant) -> Response:
    thread = await agent.runner.store.thread(caller, thread_id)
    return thread_response(await full_view(agent.runner, thread), caller)


@router.patch("/threads/{thread_id}", summary="Merge metadata into a thread")
async def patch_thread(thread_id: str, body: ThreadPatch, agent: Agent, caller: Tenant) -> Response:
    store = agent.runner.store
    thread = await store.thread(caller, thread_id)
    thread.metadata = {**thread.metadata, **body.metadata}
    await store.save_thread(thread)
    return thread_response(await full_view(agent.runner, thread), caller)


@router.delete("/threads/{thread_id}", status_code=204, summary="Delete a thread and its checkpoints")
async def delete_thread(thread_id: str, agent: Agent, caller: Tenant) -> Response:
    await agent.runner.delete_thread(caller, thread_id)
    return Response(status_code=204)


async def _matching(runner: Runner, tenant: str, body: ThreadSearch) -> list[ThreadRecord]:
    wanted = set(body.ids or [])
    found = []
    for thread in await runner.store.threads(tenant, SCAN, 0):
        if wanted and thread.thread_id not in wanted:
            continue
        if body.status is not None and thread.status != body.status:
            continue
        if any(thread.metadata.get(k) != v for k, v in (body.metadata or {}).items()):
            continue
        found.append(thread)
    return found


@router.post("/threads/search", summary="The tenant's threads, newest first, by metadata, status or ids")
async def search_threads(body: ThreadSearch, agent: Agent, caller: Tenant) -> Response:
    found = (await _matching(agent.runner, caller, body))[body.offset : body.offset + body.limit]
    views = [await full_view(agent.runner, thread) for thread in found]
    return Response(
        b"[" + b",".join(public(v, caller, v["thread_id"]) for v in views) + b"]", media_type="application/json"
    )


@router.post("/threads/count", summary="How many of the tenant's threads match")
async def count_threads(body: ThreadSearch, agent: Agent, caller: Tenant) -> Response:
    if not (body.ids or body.status or body.metadata):
        return json_response(await agent.runner.store.count_threads(caller))
    return json_response(len(await _matching(agent.runner, caller, body)))


def _state_response(view: Any, tenant: str, thread_id: str) -> Response:
    return Response(public(view, tenant, thread_id), media_type="application/json")


@router.get("/threads/{thread_id}/state", summary="The thread's current state")
async def get_state(thread_id: str, agent: Agent, caller: Tenant) -> Response:
    return _state_response(await thread_state.state(agent.runner, caller, thread_id), caller, thread_id)


@router.get("/threads/{thread_id}/state/{checkpoint_id}", summary="The thread's state at a checkpoint")
async def get_state_at(thread_id: str, checkpoint_id: str, agent: Agent, caller: Tenant) -> Response:
    view = await thread_state.state(agent.runner, caller, thread_id, checkpoint_id)
    return _state_response(view, caller, thread_id)


@router.post("/threads/{thread_id}/state/checkpoint", summary="The thread's state at a checkpoint")
async def post_state_at(
    thread_id: str, agent: Agent, caller: Tenant, checkpoint: Annotated[dict[str, Any], Body(embed=True)]
) -> Response:
    checkpoint_id = checkpoint.get("checkpoint_id")
    view = await thread_state.state(agent.runner, caller, thread_id, str(checkpoint_id) if checkpoint_id else None)
    return _state_response(view, caller, thread_id)


@router.post("/threads/{thread_id}/state", summary="Update the thread's state (as a node)")
async def update_state(thread_id: str, body: StateUpdate, agent: Agent, caller: Tenant) -> Response:
    checkpoint_id = body.checkpoint_id or (body.checkpoint.checkpoint_id if body.checkpoint else None)
    written = await thread_state.update(agent.runner, caller, thread_id, body.values, body.as_node, checkpoint_id)
    return _state_response(written, caller, thread_id)


@router.post("/threads/{thread_id}/history", summary="The thread's earlier states, newest first")
async def get_history(thread_id: str, body: HistoryRequest, agent: Agent, caller: Tenant) -> Response:
    before = body.before if isinstance(body.before, str) or body.before is None else body.before.checkpoint_id
    at = body.checkpoint.checkpoint_id if body.checkpoint else None
    views = await thread_state.history(agent.runner, caller, thread_id, body.limit, before, body.metadata, at)
    return _state_response(views, caller, thread_id)


@router.post("/threads/{thread_id}/copy", summary="A new thread with this one's state and history")
async def copy_thread(thread_id: str, agent: Agent, caller: Tenant) -> Response:
    copied = await thread_state.copy(agent.runner, caller, thread_id)
    return thread_response(await full_view(agent.runner, copied), caller)
