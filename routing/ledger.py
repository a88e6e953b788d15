"""Token usage and cost per tenant and tier, and the exact-match response cache, in Redis.

Both are on the request path of every model call, so they use redis.asyncio: a blocking
round trip there would stall every other call on the event loop.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from routing.redis_loop import LoopRedis


class Ledger:
    def __init__(self, redis: LoopRedis, prefix: str) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:usage"

    async def record(self, tenant: str, tier: str, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        key = f"{self.prefix}:{tenant}"
        async with self.redis.client().pipeline(transaction=True) as pipe:
            pipe.hincrby(key, f"{tier}:calls", 1)
            pipe.hincrby(key, f"{tier}:tokens_in", tokens_in)
            pipe.hincrby(key, f"{tier}:tokens_out", tokens_out)
            pipe.hincrbyfloat(key, f"{tier}:cost_usd", cost_usd)
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
