"""Token usage and cost per tenant and tier, budget reservations, and the exact-match response cache, in Redis.

All are on the request path of every model call, so they use redis.asyncio: a blocking
round trip there would stall every other call on the event loop.

A tenant with a budget reserves a call's largest possible cost before the call, in one script that checks
what is spent plus what other calls in flight have reserved (any process), and settles it with the real cost
after: concurrent calls cannot overspend, as a check-then-call-then-record sequence can. A reservation of
a process that died expires after its `ttl_s`.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

from routing.redis_loop import LoopRedis

# KEYS: usage hash, reservations by expiry (zset), reservation amounts (hash).
# ARGV: now, reservation id, amount, budget, ttl_s. -> {1 if reserved, spent, reserved by others}
_RESERVE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[3], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local spent = 0
local usage = redis.call('HGETALL', KEYS[1])
for i = 1, #usage, 2 do
  if string.sub(usage[i], -9) == ':cost_usd' then spent = spent + tonumber(usage[i + 1]) end
end
local reserved = 0
for _, amount in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(amount) end
if spent + reserved + tonumber(ARGV[3]) > tonumber(ARGV[4]) then
  return {0, tostring(spent), tostring(reserved)}
end
redis.call('ZADD', KEYS[2], tonumber(ARGV[1]) + tonumber(ARGV[5]), ARGV[2])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5]) * 1000))
redis.call('PEXPIRE', KEYS[3], math.ceil(tonumber(ARGV[5]) * 1000))
return {1, tostring(spent), tostring(reserved)}
"""


@dataclass(frozen=True)
class Reservation:
    tenant: str
    id: str
    amount_usd: float


@dataclass(frozen=True)
class Refusal:
    """Why a reservation did not fit: what is spent, and what other calls in flight hold."""

    spent_usd: float
    reserved_usd: float


class Ledger:
    def __init__(self, redis: LoopRedis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:usage"

    def _keys(self, tenant: str) -> list[str]:
        return [f"{self.prefix}:{tenant}", f"{self.prefix}:{tenant}:held", f"{self.prefix}:{tenant}:held-usd"]

    async def reserve(self, tenant: str, amount_usd: float, budget_usd: float, ttl_s: float) -> Reservation | Refusal:
        """Hold `amount_usd` of the tenant's budget for one call, if spent + held + it stays within the budget."""
        reservation = Reservation(tenant, uuid.uuid4().hex, amount_usd)
        args: list[str | float] = [time.time(), reservation.id, repr(amount_usd), repr(budget_usd), ttl_s]
        ok, spent, held = await self.redis.script(_RESERVE)(keys=self._keys(tenant), args=args)
        return reservation if int(ok) else Refusal(float(spent), float(held))

    async def release(self, reservation: Reservation) -> None:
        """Give a reservation back (the call failed)."""
        async with self.redis.client().pipeline(transaction=True) as pipe:
            self._drop(pipe, reservation)
            await pipe.execute()

    def _drop(self, pipe: Any, reservation: Reservation) -> None:
        _, held, amounts = self._keys(reservation.tenant)
        pipe.zrem(held, reservation.id)
        pipe.hdel(amounts, reservation.id)

    async def record(
        self, tenant: str, tier: str, tokens_in: int, tokens_out: int, cost_usd: float,
        reservation: Reservation | None = None,
    ) -> None:  # fmt: skip
        """Account a call; with its reservation, settle it in the same transaction (the real cost replaces it)."""
        key = self._keys(tenant)[0]
        async with self.redis.client().pipeline(transaction=True) as pipe:
            pipe.hincrby(key, f"{tier}:calls", 1)
            pipe.hincrby(key, f"{tier}:tokens_in", tokens_in)
            pipe.hincrby(key, f"{tier}:tokens_out", tokens_out)
            pipe.hincrbyfloat(key, f"{tier}:cost_usd", cost_usd)
            if reservation is not None:
                self._drop(pipe, reservation)
            await pipe.execute()

    async def usage(self, tenant: str) -> dict[str, dict[str, float]]:
        """{tier: {calls, tokens_in, tokens_out, cost_usd}}."""
        raw: dict[Any, Any] = await self.redis.client().hgetall(f"{self.prefix}:{tenant}")
        out: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            tier, _, name = (field.decode() if isinstance(field, bytes) else field).partition(":")
            out.setdefault(tier, {})[name] = float(value)
        return out

    async def spent(self, tenant: str) -> float:
        return sum(t.get("cost_usd", 0.0) for t in (await self.usage(tenant)).values())


class ResponseCache:
    """Same tenant, same tier's models, same messages and parameters: the same answer, from Redis."""

    def __init__(self, redis: LoopRedis, prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:llmcache"
        self.ttl_s = ttl_s

    def key(self, tenant: str, models: list[str], messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
        material = json.dumps([tenant, sorted(models), messages, params], sort_keys=True)
        return f"{self.prefix}:{hashlib.sha256(material.encode()).hexdigest()}"

    async def get(self, key: str) -> dict[str, Any] | None:
        if not self.ttl_s:
            return None
        raw = await self.redis.client().get(key)
        return None if raw is None else dict(json.loads(raw))

    async def put(self, key: str, value: dict[str, Any]) -> None:
        if self.ttl_s:
            await self.redis.client().set(key, json.dumps(value), ex=self.ttl_s)
