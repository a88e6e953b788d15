"""Tool calls that take effect once: long ones run by Celery workers, short ones with effects run in place.

A call's id is its run id and step id, so the same step asks for the same call however often the run is
resumed. The call's record is a Redis hash whose `state` moves only forward, each move a compare-and-set
in one script: queued -> running -> done | failed (or queued -> failed when nobody started it in time).

- `run` (long calls): the first ask records the call and sends one task whose Celery id is the call id;
  every later ask, from this process or from the one that resumed the run after a crash, attaches to the
  record and waits without blocking the loop. A record still queued after RESEND_AFTER_S is sent again
  (the producer may have died between recording and sending).
- `execute` (the worker): claims an execution lease, then moves queued -> running; a second delivery of
  the task finds the lease or the state and does nothing. A call found `running` with no live lease lost
  its worker mid-call: it fails, and is not run again, since whether its effect happened is unknown.
- `once` (short calls with effects, in the run's own process): the record is made `running` before the
  call; a resumed run that finds it `running` knows its process stopped mid-call and fails the step.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from routing.redis_loop import LoopRedis
from tools.toolbox import ToolResult

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
FINAL = (DONE, FAILED)
RESEND_AFTER_S = 30.0
EXEC_LEASE_S = 30.0
LOST = "the process running this call stopped mid-call; it is not run again (its effect is unknown)"

# KEYS: record; ARGV: ttl, then field/value pairs. 1 when created, 0 when the call was recorded already.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
"""
# KEYS: record; ARGV: the state it must be in, ttl, then field/value pairs. The state before the move.
_MOVE = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= ARGV[1] then return state or '' end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return state
"""


@dataclass
class CallRecord:
    call_id: str
    run_id: str
    tool: str
    arguments: dict[str, Any]
    kind: str  # long: run by a worker (`run`); once: run in the run's own process (`once`)
    state: str
    created_at: float
    deadline: float  # a long call not started by then is not started at all
    sent_at: float = 0.0
    sends: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None

    def outcome(self) -> ToolResult:
        data = self.result or {}
        return ToolResult(
            bool(data.get("ok")), str(data.get("text", "")), data.get("structured"), str(data.get("error", ""))
        )


def _fields(values: dict[str, Any]) -> list[str]:
    flat: list[str] = []
    for key, value in values.items():
        flat += [key, json.dumps(value)]
    return flat


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
        raw = await self._redis.client().hgetall(self._key(call_id))
        if not raw:
            return None
        data = {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}
        return CallRecord(**data)

    async def _create(self, record: CallRecord) -> bool:
        values = {k: v for k, v in record.__dict__.items() if v is not None}
        created = await self._redis.script(_CREATE)(
            keys=[self._key(record.call_id)], args=[self._ttl_s, *_fields(values)]
        )
        return bool(created)

    async def _move(self, call_id: str, expected: str, **changes: Any) -> bool:
        """Compare-and-set: apply `changes` only if the call is still in state `expected`."""
        before = await self._redis.script(_MOVE)(
            keys=[self._key(call_id)], args=[json.dumps(expected), self._ttl_s, *_fields(changes)]
        )
        before = before.decode() if isinstance(before, bytes) else before
        return bool(before == json.dumps(expected))

    async def _finish(self, call_id: str, expected: str, result: ToolResult) -> None:
        state = DONE if result.ok else FAILED
        await self._move(call_id, expected, state=state, finished_at=time.time(), result=result.public())

    async def run(
        self, call_id: str, run_id: str, tool: str, arguments: dict[str, Any], timeout_s: float, poll_s: float = 0.5
    ) -> ToolResult:
        """Start the call (once) or attach to it, and wait for its result without blocking the event loop."""
        now = time.time()
        record = CallRecord(call_id, run_id, tool, arguments, "long", QUEUED, now, now + timeout_s, now, 1)
        if await self._create(record):
            await anyio.to_thread.run_sync(self._send, call_id)
        wait = 0.05
        while True:
            current = await self.load(call_id)
            if current is None:
                return ToolResult(False, "", None, f"the record of call {call_id} expired")
            if current.state in FINAL:
                return current.outcome()
            if current.state == RUNNING and (
                current.kind == "once" or not await self._redis.client().exists(self._exec_key(call_id))
            ):
                await self._move(
                    call_id,
                    RUNNING,
                    state=FAILED,
                    finished_at=time.time(),
                    result=ToolResult(False, "", None, LOST).public(),
                )
                continue  # read the outcome: it may have finished between the two reads
            if current.state == QUEUED and time.time() > current.deadline:
                reason = f"{tool} was not started within {timeout_s:.0f} s (the tools queue is backed up); not run"
                await self._move(
                    call_id,
                    QUEUED,
                    state=FAILED,
                    finished_at=time.time(),
                    result=ToolResult(False, "", None, reason).public(),
                )
                continue
            stale = current.state == QUEUED and time.time() - current.sent_at > RESEND_AFTER_S
            if stale and await self._move(call_id, QUEUED, sent_at=time.time(), sends=current.sends + 1):
                await anyio.to_thread.run_sync(self._send, call_id)
            if current.state == RUNNING and time.time() > (current.started_at or current.created_at) + timeout_s:
                return ToolResult(False, "", None, f"{tool} did not finish within {timeout_s:.0f} s of starting")
            await anyio.sleep(wait)
            wait = min(poll_s, wait * 2)

    async def execute(self, call_id: str, run_tool: Callable[[CallRecord], Awaitable[ToolResult]]) -> str:
        """The worker's side: claim the call and run it once. Returns what happened (for the task's log)."""
        claimed = await self._redis.client().set(self._exec_key(call_id), "1", nx=True, ex=int(EXEC_LEASE_S))
        if not claimed:
            return "running elsewhere"
        try:
            record = await self.load(call_id)
            if record is None or record.state in FINAL:
                return "expired" if record is None else "already finished"
            if record.state == RUNNING:  # claimed, yet it ran before: its worker died mid-call
                await self._finish(call_id, RUNNING, ToolResult(False, "", None, LOST))
                return "failed: its earlier worker died mid-call"
            if time.time() > record.deadline:
                await self._finish(call_id, QUEUED, ToolResult(False, "", None, "not started in time; not run"))
                return "too late: not run"
            if not await self._move(call_id, QUEUED, state=RUNNING, started_at=time.time()):
                return "taken by another delivery"
            async with anyio.create_task_group() as group:
                group.start_soon(self._keep_claim, call_id)
                try:
                    result = await run_tool(record)
                except Exception as exc:  # noqa: BLE001 - recorded for the waiting run
                    result = ToolResult(False, "", None, f"{record.tool} failed in the worker: {type(exc).__name__}")
                group.cancel_scope.cancel()
            await self._finish(call_id, RUNNING, result)
            return DONE if result.ok else FAILED
        finally:
            await self._redis.client().delete(self._exec_key(call_id))

    async def _keep_claim(self, call_id: str) -> None:
        while True:
            await anyio.sleep(EXEC_LEASE_S / 3)
            await self._redis.client().expire(self._exec_key(call_id), int(EXEC_LEASE_S))

    async def once(
        self,
        call_id: str,
        run_id: str,
        tool: str,
        arguments: dict[str, Any],
        call: Callable[[], Awaitable[ToolResult]],
        timeout_s: float,
    ) -> ToolResult:
        """Run a call in this process at most once per call id; a repeat gets the first result."""
        now = time.time()
        record = CallRecord(call_id, run_id, tool, arguments, "once", RUNNING, now, now + timeout_s, started_at=now)
        if not await self._create(record):
            earlier = await self.load(call_id)
            if earlier is not None and earlier.state in FINAL:
                return earlier.outcome()
            if earlier is not None and earlier.kind == "long":  # a worker has it (another process's rules said so)
                return await self.run(call_id, run_id, tool, arguments, timeout_s)
            # Only a resumed run asks again, and a run is resumed only once no live process holds its lease: the
            # process that was making this call stopped.
            await self._finish(call_id, RUNNING, ToolResult(False, "", None, LOST))
            return ToolResult(False, "", None, LOST)
        try:
            result = await call()
        except Exception as exc:  # noqa: BLE001 - the toolbox turns tool failures into results: this is ours
            result = ToolResult(False, "", None, f"{tool}: {type(exc).__name__}")
        # A cancellation leaves the record `running`: the call may have taken effect, and a resume must not repeat it.
        await self._finish(call_id, RUNNING, result)
        return result
