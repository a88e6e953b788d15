"""Run and thread records, per tenant, in Redis; and the leases that tell a live run from an orphaned one.

A thread belongs to the tenant that created it: its record is keyed by tenant, so another tenant's
thread id is simply not found, and the checkpointer's thread id carries the tenant too. A run records
who it is for (the only source of the tenant when a worker or another process resumes it), its
status, and what it produced.

A run being executed holds a lease (owner, expiry on Redis's clock) that its executor renews; a run
whose lease expired while it was `running` lost its process and is resumed elsewhere from its last
checkpoint. One active run per thread: starting a run claims the thread atomically.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import ConflictError, InvalidInputError, NotFoundError
from routing.redis_loop import LoopRedis

PENDING, RUNNING, SUCCESS, ERROR, INTERRUPTED = "pending", "running", "success", "error", "interrupted"
FINAL = (SUCCESS, ERROR)
CANCELLED = "cancelled"  # an interrupted run whose cancellation ended it (its status stays `interrupted`)
MULTITASK = ("reject", "enqueue", "interrupt", "rollback")
THREAD_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# KEYS: lease, lease index; ARGV: run id, owner, ttl ms. 1 when taken (free, expired, or already ours).
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[2] then return 0 end
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('ZADD', KEYS[2], expires, ARGV[1])
return 1
"""
# KEYS: lease, lease index; ARGV: run id, owner, ttl ms (0: release). 1 when it was ours.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
if tonumber(ARGV[3]) == 0 then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
local now = redis.call('TIME')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return 1
"""
# KEYS: lease index; ARGV: now slack ms. Run ids whose lease expired (their lease keys are gone).
_EXPIRED = """
local now = redis.call('TIME')
local cutoff = now[1] * 1000 + math.floor(now[2] / 1000) - tonumber(ARGV[1])
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'LIMIT', 0, 50)
"""
# KEYS: lease, lease index; ARGV: run id, owner. An execution that ended without settling the run (a crash of a
# step's storage, a cancellation): the lease goes, the run is due in the index now, and any process resumes it.
_DROP = """
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000), ARGV[1])
return 1
"""
# KEYS: thread's active-run key, lease index, run record, thread's runs, thread's queue; ARGV: run id, ttl s,
# grace ms, record, created at, strategy. All or nothing. A free thread is claimed for the run, which is recorded and
# in the lease index, due after the grace: if no process starts executing it by then (its starter died), it is
# found like any orphan. A busy thread refuses the run (`reject`) or records it queued behind the holder (every
# other strategy; `interrupt` and `rollback` then cancel the holder). Returns {outcome, holder}.
_CREATE_RUN = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] and ARGV[6] == 'reject' then return {'busy', holder} end
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[2])
if holder and holder ~= ARGV[1] then
  redis.call('RPUSH', KEYS[5], ARGV[1])
  redis.call('EXPIRE', KEYS[5], ARGV[2])
  return {'queued', holder}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return {'started', ARGV[1]}
"""
# KEYS: thread's active-run key, thread's queue, lease index; ARGV: run id, ttl s, grace ms. If this run holds the
# thread: the next queued run takes it (due in the lease index after the grace, like a new run) and its id is
# returned for the caller to dispatch; or the thread is free.
_FREE_THREAD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
local following = redis.call('LPOP', KEYS[2])
if not following then
  redis.call('DEL', KEYS[1])
  return false
end
redis.call('SET', KEYS[1], following, 'EX', ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[3], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), following)
return following
"""
# KEYS: lease index, lease; ARGV: run id, grace ms. 1 for the one caller that claims an orphaned run for recovery:
# its lease is gone and it is due; it becomes due again after the grace (if whoever was sent it never starts it).
_CLAIM_ORPHAN = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not due then return 0 end
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
if tonumber(due) > ms then return 0 end
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
return 1
"""
# KEYS: lease index, lease; ARGV: run id, ms. A run not being executed becomes due `ms` from now (if indexed).
_DEFER = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local now = redis.call('TIME')
return redis.call('ZADD', KEYS[1], 'XX', now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2]), ARGV[1])
"""
# KEYS: thread's active-run key; ARGV: run id, ttl s. The run holding the thread after the call.
_CLAIM_THREAD = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return ARGV[1]
"""


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class ThreadRecord:
    thread_id: str
    tenant: str
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    status: str = "idle"  # idle | busy | interrupted | error
    last_run_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunRecord:
    run_id: str
    thread_id: str
    tenant: str
    question: str
    status: str = PENDING
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    executions: int = 0  # how many times a process started it (more than one: it was resumed after a crash)
    error: str = ""
    stop_reason: str = ""
    answer: str | None = None
    citations: list[dict[str, Any]] = field(default_factory=list)
    interrupts: list[dict[str, Any]] = field(default_factory=list)
    plan_source: str = ""
    usage: dict[str, float] = field(default_factory=dict)
    trace_id: str | None = None
    trace_parent: str | None = None  # W3C traceparent the run began in: later executions join its trace
    interrupted_at: float | None = None
    # The decisions an approval sent, kept until the run settles: a run resumed after a crash gives the graph the
    # same decisions again instead of asking the person twice.
    resume: dict[str, Any] | None = None
    # What an API client asked (graphs/agent_runs.py): the graph's input or a command, and the run's options
    # (stream modes, interrupt_before/after, durability, the budgets, tags and recursion limit of its config).
    assistant_id: str = ""
    input: Any = None
    command: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    multitask_strategy: str = "reject"
    cancel_reason: str | None = None
    temporary: bool = False  # a stateless run: its thread is deleted when it ends


class RunStore:
    def __init__(self, redis: LoopRedis, prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self._p = f"{prefix}:agents"
        self.ttl_s = ttl_s

    # keys
    def _run(self, run_id: str) -> str:
        return f"{self._p}:run:{run_id}"

    def _thread(self, tenant: str, thread_id: str) -> str:
        return f"{self._p}:thread:{tenant}:{thread_id}"

    def _threads(self, tenant: str) -> str:
        return f"{self._p}:threads:{tenant}"

    def _thread_runs(self, tenant: str, thread_id: str) -> str:
        return f"{self._p}:thread-runs:{tenant}:{thread_id}"

    def _active(self, tenant: str, thread_id: str) -> str:
        return f"{self._p}:active:{tenant}:{thread_id}"

    def _queue(self, tenant: str, thread_id: str) -> str:
        return f"{self._p}:queue:{tenant}:{thread_id}"

    def _lease(self, run_id: str) -> str:
        return f"{self._p}:lease:{run_id}"

    @property
    def _leases(self) -> str:
        return f"{self._p}:leases"

    # threads
    async def create_thread(
        self, tenant: str, thread_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord:
        if thread_id is not None and not THREAD_ID.fullmatch(thread_id):
            raise InvalidInputError(f"thread id {thread_id!r} is not valid: 1 to 64 of A-Z a-z 0-9 . _ : -")
        thread = ThreadRecord(thread_id or new_id(), tenant, metadata=dict(metadata or {}))
        created = await self.redis.client().set(
            self._thread(tenant, thread.thread_id), json.dumps(asdict(thread)), nx=True, ex=self.ttl_s
        )
        if not created:
            return await self.thread(tenant, thread.thread_id)
        await self.redis.client().zadd(self._threads(tenant), {thread.thread_id: thread.updated_at})
        return thread

    async def thread(self, tenant: str, thread_id: str) -> ThreadRecord:
        raw = await self.redis.client().get(self._thread(tenant, thread_id))
        if raw is None:
            raise NotFoundError(f"no thread {thread_id!r}")
        return ThreadRecord(**json.loads(raw))

    async def save_thread(self, thread: ThreadRecord) -> None:
        thread.updated_at = time.time()
        client = self.redis.client()
        await client.set(self._thread(thread.tenant, thread.thread_id), json.dumps(asdict(thread)), ex=self.ttl_s)
        await client.zadd(self._threads(thread.tenant), {thread.thread_id: thread.updated_at})

    async def threads(self, tenant: str, limit: int, offset: int) -> list[ThreadRecord]:
        ids = _strings(await self.redis.client().zrevrange(self._threads(tenant), offset, offset + limit - 1))
        out = []
        for thread_id in ids:
            try:
                out.append(await self.thread(tenant, thread_id))
            except NotFoundError:  # expired: drop it from the index
                await self.redis.client().zrem(self._threads(tenant), thread_id)
        return out

    # runs
    async def create_run(self, run: RunRecord, start_within_s: float) -> tuple[str, str]:
        """Record a run and claim its thread for it, or queue it behind the run holding the thread (per its
        `multitask_strategy`; `reject` raises BusyError). Returns (outcome: started | queued, holder). A run that
        no process has started executing within `start_within_s` of its start counts as orphaned."""
        keys = [
            self._active(run.tenant, run.thread_id),
            self._leases,
            self._run(run.run_id),
            self._thread_runs(run.tenant, run.thread_id),
            self._queue(run.tenant, run.thread_id),
        ]
        args: list[str | int | float] = [
            run.run_id,
            self.ttl_s,
            int(start_within_s * 1000),
            json.dumps(asdict(run), default=str),
            run.created_at,
            run.multitask_strategy,
        ]
        outcome, holder = _strings(await self.redis.script(_CREATE_RUN)(keys=keys, args=args))
        if outcome == "busy":
            raise ConflictError(f"thread {run.thread_id} is busy with run {holder} (multitask_strategy reject)")
        return outcome, holder

    async def run(self, run_id: str) -> RunRecord:
        raw = await self.redis.client().get(self._run(run_id))
        if raw is None:
            raise NotFoundError(f"no run {run_id!r}")
        return RunRecord(**json.loads(raw))

    async def run_of(self, tenant: str, run_id: str) -> RunRecord:
        """The run if it is this tenant's; another tenant's run is not found, exactly as a missing one."""
        run = await self.run(run_id)
        if run.tenant != tenant:
            raise NotFoundError(f"no run {run_id!r}")
        return run

    async def save_run(self, run: RunRecord) -> None:
        run.updated_at = time.time()
        await self.redis.client().set(self._run(run.run_id), json.dumps(asdict(run), default=str), ex=self.ttl_s)

    async def delete_run(self, run: RunRecord) -> None:
        client = self.redis.client()
        await client.delete(self._run(run.run_id))
        await client.zrem(self._thread_runs(run.tenant, run.thread_id), run.run_id)
        await client.lrem(self._queue(run.tenant, run.thread_id), 0, run.run_id)
        await client.zrem(self._leases, run.run_id)

    async def thread_runs(self, tenant: str, thread_id: str, limit: int = 20) -> list[RunRecord]:
        ids = _strings(await self.redis.client().zrevrange(self._thread_runs(tenant, thread_id), 0, limit - 1))
        runs = []
        for run_id in ids:
            try:
                runs.append(await self.run_of(tenant, run_id))
            except NotFoundError:
                continue
        return runs

    async def free_thread(self, run: RunRecord, start_within_s: float = 60.0) -> str | None:
        """Release the thread this run holds; the next queued run takes it, and its id is returned (dispatch it)."""
        following = await self.redis.script(_FREE_THREAD)(
            keys=[self._active(run.tenant, run.thread_id), self._queue(run.tenant, run.thread_id), self._leases],
            args=[run.run_id, self.ttl_s, int(start_within_s * 1000)],
        )
        return None if not following else (following.decode() if isinstance(following, bytes) else str(following))

    async def claim_thread(self, run: RunRecord) -> str:
        """Claim the thread for a run that goes on (an approval); the holder's id (this run's when it got it)."""
        holder = await self.redis.script(_CLAIM_THREAD)(
            keys=[self._active(run.tenant, run.thread_id)], args=[run.run_id, self.ttl_s]
        )
        return holder.decode() if isinstance(holder, bytes) else str(holder)

    async def unqueue(self, run: RunRecord) -> bool:
        """Take a queued run out of its thread's queue; True when it was there."""
        return bool(await self.redis.client().lrem(self._queue(run.tenant, run.thread_id), 0, run.run_id))

    async def queued(self, tenant: str, thread_id: str) -> list[str]:
        return _strings(await self.redis.client().lrange(self._queue(tenant, thread_id), 0, -1))

    async def delete_thread(self, thread: ThreadRecord) -> None:
        client = self.redis.client()
        for key in (
            self._thread(thread.tenant, thread.thread_id),
            self._thread_runs(thread.tenant, thread.thread_id),
            self._queue(thread.tenant, thread.thread_id),
            self._active(thread.tenant, thread.thread_id),
        ):
            await client.delete(key)
        await client.zrem(self._threads(thread.tenant), thread.thread_id)

    async def count_threads(self, tenant: str) -> int:
        return int(await self.redis.client().zcard(self._threads(tenant)))

    # a tenant's runs pending or running, for admission (api/agent/admission.py)
    def _inflight(self, tenant: str) -> str:
        return f"{self._p}:inflight:{tenant}"

    async def mark_inflight(self, run: RunRecord) -> None:
        await self.redis.client().zadd(self._inflight(run.tenant), {run.run_id: time.time()})

    async def unmark_inflight(self, run: RunRecord) -> None:
        await self.redis.client().zrem(self._inflight(run.tenant), run.run_id)

    async def count_inflight(self, tenant: str, older_than_s: float = 3600.0) -> int:
        """Entries older than `older_than_s` are dropped first: a run that never settled holds no slot forever."""
        client = self.redis.client()
        await client.zremrangebyscore(self._inflight(tenant), "-inf", time.time() - older_than_s)
        return int(await client.zcard(self._inflight(tenant)))

    async def active_run(self, tenant: str, thread_id: str) -> str | None:
        raw = await self.redis.client().get(self._active(tenant, thread_id))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    # cancellation: a flag the executor checks, and a message that reaches whichever process executes the run
    @property
    def cancel_channel(self) -> str:
        return f"{self._p}:cancel"

    async def request_cancel(self, run_id: str, action: str) -> None:
        client = self.redis.client()
        await client.set(f"{self._p}:cancel:{run_id}", action, ex=self.ttl_s)
        await client.publish(self.cancel_channel, json.dumps({"run_id": run_id, "action": action}))

    async def cancel_requested(self, run_id: str) -> str | None:
        raw = await self.redis.client().get(f"{self._p}:cancel:{run_id}")
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

    async def cancellations(self) -> AsyncIterator[tuple[str, str]]:
        """(run id, action) for every cancellation asked from now on, from any process."""
        pubsub = self.redis.client().pubsub()
        await pubsub.subscribe(self.cancel_channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    data = json.loads(message["data"])
                    yield str(data["run_id"]), str(data["action"])
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    # leases
    async def take_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        taken = await self.redis.script(_TAKE)(
            keys=[self._lease(run_id), self._leases], args=[run_id, owner, int(ttl_s * 1000)]
        )
        return bool(taken)

    async def renew_lease(self, run_id: str, owner: str, ttl_s: float) -> bool:
        kept = await self.redis.script(_RENEW)(
            keys=[self._lease(run_id), self._leases], args=[run_id, owner, int(ttl_s * 1000)]
        )
        return bool(kept)

    async def release_lease(self, run_id: str, owner: str) -> None:
        """The run is settled (ended, or waiting for a decision): it leaves the lease index."""
        await self.redis.script(_RENEW)(keys=[self._lease(run_id), self._leases], args=[run_id, owner, 0])

    async def drop_lease(self, run_id: str, owner: str) -> None:
        """The execution stopped before the run settled: the run is due for recovery at once."""
        await self.redis.script(_DROP)(keys=[self._lease(run_id), self._leases], args=[run_id, owner])

    async def expired_leases(self, slack_s: float = 0.0) -> list[str]:
        ids = await self.redis.script(_EXPIRED)(keys=[self._leases], args=[int(slack_s * 1000)])
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    async def claim_orphan(self, run_id: str, grace_s: float) -> bool:
        """True for exactly one of the processes that found this orphaned run, until `grace_s` has passed."""
        claimed = await self.redis.script(_CLAIM_ORPHAN)(
            keys=[self._leases, self._lease(run_id)], args=[run_id, int(grace_s * 1000)]
        )
        return bool(claimed)

    async def defer(self, run_id: str, seconds: float) -> None:
        await self.redis.script(_DEFER)(keys=[self._leases, self._lease(run_id)], args=[run_id, int(seconds * 1000)])

    async def forget_lease(self, run_id: str) -> None:
        await self.redis.client().zrem(self._leases, run_id)


def _strings(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
