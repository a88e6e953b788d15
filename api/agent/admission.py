"""Admission of new runs: refused with 429 and `Retry-After` before anything is recorded, never dropped after.

Three limits, checked in this order: the `runs` queue's backlog (all tenants), the tenant's runs pending or
running at once, and the tenant's rate (a token bucket in Redis, shared by every API replica).
"""

from __future__ import annotations

import math

from core.errors import BusyError
from core.settings import RunApiSettings
from graphs.runs import RunStore
from routing.redis_loop import LoopRedis
from workers.fair_queue import size_key

# KEYS: bucket; ARGV: rate per s, burst. Takes one token; returns 0 when taken, else ms until one is there.
_TAKE_TOKEN = """
local now = redis.call('TIME')
local ms = now[1] * 1000 + math.floor(now[2] / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or ms
tokens = math.min(burst, tokens + (ms - at) * rate / 1000)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = math.ceil((1 - tokens) * 1000 / rate) end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return wait
"""


class Admission:
    def __init__(self, redis: LoopRedis, store: RunStore, prefix: str, settings: RunApiSettings) -> None:
        self.redis = redis
        self.store = store
        self.settings = settings
        self._queue = f"{prefix}:runs"  # Celery's list for the queue (kombu's global key prefix)
        self._backlogs = f"{prefix}:{size_key('runs')}"  # runs in the tenants' backlogs (workers/fair_queue.py)
        self._p = f"{prefix}:agents"

    async def admit(self, tenant: str) -> None:
        s = self.settings
        client = self.redis.client()
        async with client.pipeline(transaction=False) as pipe:
            pipe.llen(self._queue)
            pipe.hget(self._backlogs, "jobs")
            in_celery, in_backlogs = await pipe.execute()
        waiting = int(in_celery) + int(in_backlogs or 0)
        if waiting >= s.runs_queue_limit:
            raise BusyError(
                f"{waiting} runs are waiting for a worker (limit {s.runs_queue_limit}); retry later", 5, "runs_queue"
            )
        inflight = await self.store.count_inflight(tenant)
        if inflight >= s.tenant_inflight_limit:
            raise BusyError(
                f"this tenant has {inflight} runs pending or running (limit {s.tenant_inflight_limit}); "
                "retry once some have ended",
                2,
                "tenant_runs",
            )
        wait_ms = int(
            await self.redis.script(_TAKE_TOKEN)(
                keys=[f"{self._p}:rate:{tenant}"], args=[s.tenant_rate_per_s, s.tenant_burst]
            )
        )
        if wait_ms:
            raise BusyError(
                f"this tenant starts more than {s.tenant_rate_per_s:g} runs per second; retry shortly",
                max(1, math.ceil(wait_ms / 1000)),
                "tenant_rate",
            )
