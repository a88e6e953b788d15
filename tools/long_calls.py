"""Long tool calls run by Celery workers, each taking effect once.

A call's id is its run id and step id, so the same step asks for the same call however often the
run is resumed. The first ask records the call in Redis (SET NX) and sends one task whose Celery
id is the call id; every later ask, from this process or from the process that resumed the run
after a crash, attaches to that record and waits for its result instead of sending again.

A worker runs a call only after claiming it (SET NX on an execution lease it renews while the tool
runs), so a task delivered twice (a re-send, a redelivery) executes the tool once. A call whose
worker died mid-call (its state `running`, its lease expired) is failed, not run again: whether its
effect happened is unknown, and a second effect would be worse than a failed step.

Short calls with effects, run in the run's own process, keep the same record (`once`): a run resumed
after its process died mid-call finds the call `running` and fails the step instead of calling again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import anyio

from routing.redis_loop import LoopRedis
from tools.toolbox import ToolResult

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINAL = (DONE, FAILED)
# A record still `queued` this long after its last send is sent again (a producer may have died between
# recording and sending; the worker's claim makes the second send harmless).
RESEND_AFTER_S = 30.0
EXEC_LEASE_S = 30.0


@dataclass
class CallRecord:
    call_id: str
    run_id: str
    tool: str
    arguments: dict[str, Any]
    state: str = QUEUED
    created_at: float = field(default_factory=time.time)
    sent_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    sends: int = 1
    result: dict[str, Any] | None = None
    kind: str = "long"  # long: run by a worker (`run`); once: run in the run's own process (`once`)

    def outcome(self) -> ToolResult:
        data = self.result or {}
        return ToolResult(
            bool(data.get("ok")), str(data.get("text", "")), data.get("structured"), str(data.get("error", ""))
        )


class LongCalls:
    def __init__(self, redis: LoopRedis, prefix: str, send: Callable[[str], None], ttl_s: int) -> None:
        """`send(call_id)` queues the Celery task for a call (given by the queue adapter)."""
        self._redis = redis
        self._prefix = f"{prefix}:longcall"
        self._send = send
        self._ttl_s = ttl_s

    def _key(self, call_id: str) -> str:
        return f"{self._prefix}:{call_id}"

    def _exec_key(self, call_id: str) -> str:
        return f"{self._prefix}:{call_id}:exec"

    async def load(self, call_id: str) -> CallRecord | None:
        raw = await self._redis.client().get(self._key(call_id))
        return None if raw is None else CallRecord(**json.loads(raw))

    async def _save(self, record: CallRecord) -> None:
        await self._redis.client().set(self._key(record.call_id), json.dumps(asdict(record)), ex=self._ttl_s)

    async def run(
        self, call_id: str, run_id: str, tool: str, arguments: dict[str, Any], timeout_s: float, poll_s: float = 0.5
    ) -> ToolResult:
        """Start the call (once) or attach to it, and wait for its result without blocking the event loop."""
        record = CallRecord(call_id, run_id, tool, arguments)
        created = await self._redis.client().set(
            self._key(call_id), json.dumps(asdict(record)), nx=True, ex=self._ttl_s
        )
        if created:
            await anyio.to_thread.run_sync(self._send, call_id)
        deadline = time.monotonic() + timeout_s
        wait = 0.05
        while True:
            current = await self.load(call_id)
            if current is None:
                return ToolResult(False, "", None, f"the record of long call {call_id} expired")
            if current.state in FINAL:
                return current.outcome()
            if current.state == RUNNING and (
                current.kind == "once" or not await self._redis.client().exists(self._exec_key(call_id))
            ):
                again = await self.load(call_id)  # it may have finished between the two reads
                if again is not None and again.state in FINAL:
                    return again.outcome()
                return await self._fail_lost(again or current)
            if current.state == QUEUED and time.time() - current.sent_at > RESEND_AFTER_S:
                current.sent_at, current.sends = time.time(), current.sends + 1
                await self._save(current)
                await anyio.to_thread.run_sync(self._send, call_id)
            if time.monotonic() > deadline:
                return ToolResult(False, "", None, f"{tool} did not finish within {timeout_s:.0f} s (call {call_id})")
            await anyio.sleep(wait)
            wait = min(poll_s, wait * 2)

    async def once(
        self,
        call_id: str,
        run_id: str,
        tool: str,
        arguments: dict[str, Any],
        call: Callable[[], Awaitable[ToolResult]],
    ) -> ToolResult:
        """Run a call in this process at most once per call id; a repeat gets the first result."""
        record = CallRecord(call_id, run_id, tool, arguments, state=RUNNING, started_at=time.time(), kind="once")
        created = await self._redis.client().set(
            self._key(call_id), json.dumps(asdict(record)), nx=True, ex=self._ttl_s
        )
        if not created:
            earlier = await self.load(call_id)
            if earlier is not None and earlier.state in FINAL:
                return earlier.outcome()
            if earlier is not None and earlier.kind == "long":  # a worker has it (another process's rules said so)
                return await self.run(call_id, run_id, tool, arguments, timeout_s=RESEND_AFTER_S * 30)
            # Only a resumed run asks again, and a run is resumed only once its process is gone: that
            # process was making this call when it stopped.
            return await self._fail_lost(earlier or record)
        try:
            result = await call()
        except BaseException:
            await self._redis.client().delete(self._key(call_id))  # it never reached the tool: free to retry
            raise
        record.state, record.finished_at, record.result = (DONE if result.ok else FAILED), time.time(), result.public()
        await self._save(record)
        return result

    async def _fail_lost(self, record: CallRecord) -> ToolResult:
        record.state, record.finished_at = FAILED, time.time()
        reason = "the process running this call stopped mid-call; it is not run again (its effect is unknown)"
        record.result = ToolResult(False, "", None, reason).public()
        await self._save(record)
        return record.outcome()

    async def execute(self, call_id: str, run_tool: Callable[[CallRecord], Awaitable[ToolResult]]) -> str:
        """The worker's side: claim the call and run it once. Returns what happened (for the task's log)."""
        claimed = await self._redis.client().set(self._exec_key(call_id), "1", nx=True, ex=int(EXEC_LEASE_S))
        if not claimed:
            return "running elsewhere"
        # Read after claiming: an execution that finished just before the claim is seen as finished.
        record = await self.load(call_id)
        if record is None or record.state in FINAL:
            await self._redis.client().delete(self._exec_key(call_id))
            return "expired" if record is None else "already finished"
        if record.state == RUNNING:  # claimed, yet it ran before: its worker died mid-call
            await self._fail_lost(record)
            await self._redis.client().delete(self._exec_key(call_id))
            return "failed: its earlier worker died mid-call"
        record.state, record.started_at = RUNNING, time.time()
        await self._save(record)
        async with anyio.create_task_group() as group:
            group.start_soon(self._keep_claim, call_id)
            try:
                result = await run_tool(record)
            except Exception as exc:  # noqa: BLE001 - recorded for the waiting run, then raised for the task's log
                result = ToolResult(False, "", None, f"{record.tool} failed in the worker: {type(exc).__name__}")
            group.cancel_scope.cancel()
        record.state, record.finished_at = (DONE if result.ok else FAILED), time.time()
        record.result = result.public()
        await self._save(record)
        await self._redis.client().delete(self._exec_key(call_id))
        return record.state

    async def _keep_claim(self, call_id: str) -> None:
        while True:
            await anyio.sleep(EXEC_LEASE_S / 3)
            await self._redis.client().expire(self._exec_key(call_id), int(EXEC_LEASE_S))
