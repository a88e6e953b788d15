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
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from core.errors import BusyError, NotFoundError
from routing.redis_loop import LoopRedis

PENDING, RUNNING, SUCCESS, ERROR, INTERRUPTED = "pending", "running", "success", "error", "interrupted"
FINAL = (SUCCESS, ERROR)

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
# KEYS: thread's active-run key, lease index, run record, thread's runs; ARGV: run id, ttl s, grace ms, record,
# created at. All or nothing: the thread claimed for the run, the run recorded, and in the lease index, due after
# the grace: if no process starts executing it by then (its starter died), it is found like any orphan. Returns
# the run id holding the thread.
_CREATE_RUN = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return holder end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('SET', KEYS[3], ARGV[4], 'EX', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[1])
redis.call('EXPIRE', KEYS[4], ARGV[2])
local now = redis.call('TIME')
redis.call('ZADD', KEYS[2], now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[3]), ARGV[1])
return ARGV[1]
"""
# KEYS: thread's active-run key; ARGV: run id. Frees the thread if this run holds it.
_FREE_THREAD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
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
    interrupted_at: float | None = None
    # The decisions an approval sent, kept until the run settles: a run resumed after a crash gives the graph the
    # same decisions again instead of asking the person twice.
    resume: dict[str, Any] | None = None


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

    def _lease(self, run_id: str) -> str:
        return f"{self._p}:lease:{run_id}"

    @property
    def _leases(self) -> str:
        return f"{self._p}:leases"

    # threads
    async def create_thread(
        self, tenant: str, thread_id: str | None = None, metadata: dict[str, Any] | None = None
    ) -> ThreadRecord:
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
    async def create_run(self, run: RunRecord, start_within_s: float) -> RunRecord:
        """Record a run and claim its thread for it; BusyError when another run holds the thread. A run that no
        process has started executing within `start_within_s` counts as orphaned."""
        keys = [self._active(run.tenant, run.thread_id), self._leases, self._run(run.run_id),
                self._thread_runs(run.tenant, run.thread_id)]  # fmt: skip
        args: list[str | int | float] = [
            run.run_id,
            self.ttl_s,
            int(start_within_s * 1000),
            json.dumps(asdict(run)),
            run.created_at,
        ]
        holder = await self.redis.script(_CREATE_RUN)(keys=keys, args=args)
        holder = holder.decode() if isinstance(holder, bytes) else holder
        if holder != run.run_id:
            raise BusyError(f"thread {run.thread_id} is busy with run {holder}: wait for it to end", 2)
        return run

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
        await self.redis.client().set(self._run(run.run_id), json.dumps(asdict(run)), ex=self.ttl_s)

    async def thread_runs(self, tenant: str, thread_id: str, limit: int = 20) -> list[RunRecord]:
        ids = _strings(await self.redis.client().zrevrange(self._thread_runs(tenant, thread_id), 0, limit - 1))
        runs = []
        for run_id in ids:
            try:
                runs.append(await self.run_of(tenant, run_id))
            except NotFoundError:
                continue
        return runs

    async def free_thread(self, run: RunRecord) -> None:
        await self.redis.script(_FREE_THREAD)(keys=[self._active(run.tenant, run.thread_id)], args=[run.run_id])

    async def active_run(self, tenant: str, thread_id: str) -> str | None:
        raw = await self.redis.client().get(self._active(tenant, thread_id))
        return None if raw is None else (raw.decode() if isinstance(raw, bytes) else str(raw))

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

    async def forget_lease(self, run_id: str) -> None:
        await self.redis.client().zrem(self._leases, run_id)


def _strings(values: Any) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]
