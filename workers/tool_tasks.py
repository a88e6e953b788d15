"""The long tool call task: a call id in (run id + step id), the tool run once, its result in Redis."""

from __future__ import annotations

import logging

from celery import shared_task

from tools.long_calls import CallRecord
from tools.toolbox import ToolResult
from workers.app import TOOL_TASK

log = logging.getLogger(__name__)


@shared_task(name=TOOL_TASK, acks_late=True, reject_on_worker_lost=True)  # type: ignore[untyped-decorator]
def call_tool(call_id: str) -> str:
    """Delivered at least once; runs the tool at most once (the call's claim in Redis)."""
    from workers.process import host, run_async

    current = host()
    if current.long_calls is None:
        raise RuntimeError("this worker has no long-call records")
    store, toolbox, calls = current.store, current.toolbox, current.long_calls

    async def run_tool(record: CallRecord) -> ToolResult:
        # The tenant comes from the stored run record, never from the task's message.
        run = await store.run(record.run_id)
        await toolbox.ready()
        return await toolbox.call(
            run.tenant, record.tool, record.arguments, timeout_s=current.settings.agents.long_tool_timeout_s
        )

    outcome = run_async(calls.execute(call_id, run_tool))
    log.info("long tool call %s: %s", call_id, outcome)
    return outcome
