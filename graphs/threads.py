"""A thread's checkpointed state as clients read and change it: the current state or one checkpoint, the
history, an update (as a node), a copy. Transport-free; the HTTP API shapes it for LangGraph's SDK.

Checkpoints are keyed by the checkpointer's thread id (`tenant/thread`); what leaves here names the
client's thread id only.
"""

from __future__ import annotations

from typing import Any

from langgraph.errors import InvalidUpdateError
from langgraph.types import StateSnapshot

from core.errors import ConflictError, InvalidInputError, NotFoundError
from graphs.runner import Runner, checkpoint_thread, thread_config
from graphs.runs import ThreadRecord


def _checkpoint(config: Any, thread_id: str) -> dict[str, Any] | None:
    if not config:
        return None
    configurable = config.get("configurable") or {}
    return {
        "thread_id": thread_id,
        "checkpoint_ns": configurable.get("checkpoint_ns", ""),
        "checkpoint_id": configurable.get("checkpoint_id"),
        "checkpoint_map": None,
    }


def interrupts_of(snapshot: StateSnapshot) -> list[dict[str, Any]]:
    return [{"value": i.value, "id": i.id} for task in snapshot.tasks for i in task.interrupts]


def snapshot_view(snapshot: StateSnapshot, thread_id: str) -> dict[str, Any]:
    """LangGraph's ThreadState shape."""
    return {
        "values": snapshot.values or {},
        "next": list(snapshot.next),
        "checkpoint": _checkpoint(snapshot.config, thread_id),
        "metadata": dict(snapshot.metadata or {}),
        "created_at": snapshot.created_at,
        "parent_checkpoint": _checkpoint(snapshot.parent_config, thread_id),
        "tasks": [
            {
                "id": task.id,
                "name": task.name,
                "error": None if task.error is None else str(task.error),
                "interrupts": [{"value": i.value, "id": i.id} for i in task.interrupts],
                "checkpoint": None,
                "state": None,
                "result": task.result,
            }
            for task in snapshot.tasks
        ],
        "interrupts": interrupts_of(snapshot),
    }


def _config(tenant: str, thread_id: str, checkpoint_id: str | None = None, ns: str = "") -> Any:
    config = thread_config(tenant, thread_id)
    if checkpoint_id:
        config["configurable"].update(checkpoint_id=checkpoint_id, checkpoint_ns=ns)
    return config


async def snapshot(runner: Runner, tenant: str, thread_id: str, checkpoint_id: str | None = None) -> StateSnapshot:
    await runner.store.thread(tenant, thread_id)  # another tenant's thread is not found
    found = await runner.graph.aget_state(_config(tenant, thread_id, checkpoint_id))
    if checkpoint_id and not found.config:
        raise NotFoundError(f"no checkpoint {checkpoint_id!r} on thread {thread_id!r}")
    return found


async def state(runner: Runner, tenant: str, thread_id: str, checkpoint_id: str | None = None) -> dict[str, Any]:
    return snapshot_view(await snapshot(runner, tenant, thread_id, checkpoint_id), thread_id)


async def history(
    runner: Runner,
    tenant: str,
    thread_id: str,
    limit: int,
    before: str | None = None,
    metadata: dict[str, Any] | None = None,
    checkpoint_id: str | None = None,
) -> list[dict[str, Any]]:
    await runner.store.thread(tenant, thread_id)
    before_config = _config(tenant, thread_id, before) if before else None
    found = []
    async for item in runner.graph.aget_state_history(
        _config(tenant, thread_id, checkpoint_id), filter=metadata or None, before=before_config, limit=limit
    ):
        found.append(snapshot_view(item, thread_id))
    return found


async def update(
    runner: Runner,
    tenant: str,
    thread_id: str,
    values: Any,
    as_node: str | None = None,
    checkpoint_id: str | None = None,
) -> dict[str, Any]:
    """Write `values` into the thread's state as if `as_node` had returned them; a new checkpoint."""
    await runner.store.thread(tenant, thread_id)
    holder = await runner.store.active_run(tenant, thread_id)
    if holder is not None:
        raise ConflictError(f"thread {thread_id} is busy with run {holder}: its state changes when the run ends")
    if as_node is not None and as_node not in runner.graph.nodes:
        raise InvalidInputError(f"unknown node {as_node!r}: the graph's nodes are {sorted(runner.graph.nodes)}")
    try:
        written = await runner.graph.aupdate_state(_config(tenant, thread_id, checkpoint_id), values, as_node=as_node)
    except (ValueError, KeyError, TypeError, InvalidUpdateError) as exc:
        raise InvalidInputError(f"the state update was refused: {exc}") from exc
    return {"checkpoint": _checkpoint(written, thread_id)}


async def copy(runner: Runner, tenant: str, thread_id: str) -> ThreadRecord:
    """A new thread of the tenant with every checkpoint of this one (the history included)."""
    source = await runner.store.thread(tenant, thread_id)
    target = await runner.store.create_thread(tenant, metadata=dict(source.metadata))
    saver = runner.checkpointer
    tuples = [t async for t in saver.alist(thread_config(tenant, thread_id))]
    destination = checkpoint_thread(tenant, target.thread_id)
    for item in reversed(tuples):  # oldest first, each under its parent
        configurable = item.config["configurable"]
        parent = (item.parent_config or {}).get("configurable", {}).get("checkpoint_id")
        put_config: Any = {
            "configurable": {
                "thread_id": destination,
                "checkpoint_ns": configurable.get("checkpoint_ns", ""),
                **({"checkpoint_id": parent} if parent else {}),
            }
        }
        written = await saver.aput(put_config, item.checkpoint, item.metadata, item.checkpoint["channel_versions"])
        for task_id, channel, value in item.pending_writes or []:
            await saver.aput_writes(written, [(channel, value)], task_id)
    target.status = "interrupted" if source.status == "interrupted" else "idle"
    await runner.store.save_thread(target)
    return target
