"""Token usage and cost per tenant and tier, and the exact-match response cache, in Redis."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import redis


class Ledger:
    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.redis = client
        self.prefix = f"{prefix}:usage"

    def record(self, tenant: str, tier: str, tokens_in: int, tokens_out: int, cost_usd: float) -> None:
        key = f"{self.prefix}:{tenant}"
        with self.redis.pipeline() as pipe:
            pipe.hincrby(key, f"{tier}:calls", 1)
            pipe.hincrby(key, f"{tier}:tokens_in", tokens_in)
            pipe.hincrby(key, f"{tier}:tokens_out", tokens_out)
            pipe.hincrbyfloat(key, f"{tier}:cost_usd", cost_usd)
            pipe.execute()

    def usage(self, tenant: str) -> dict[str, dict[str, float]]:
        """{tier: {calls, tokens_in, tokens_out, cost_usd}}."""
        raw: dict[Any, Any] = self.redis.hgetall(f"{self.prefix}:{tenant}")
        out: dict[str, dict[str, float]] = {}
        for field, value in raw.items():
            tier, _, name = (field.decode() if isinstance(field, bytes) else field).partition(":")
            out.setdefault(tier, {})[name] = float(value)
        return out

    def spent(self, tenant: str) -> float:
        return sum(t.get("cost_usd", 0.0) for t in self.usage(tenant).values())


class ResponseCache:
    """Same tenant, same tier's models, same messages and parameters: the same answer, from Redis."""

    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self.redis = client
        self.prefix = f"{prefix}:llmcache"
        self.ttl_s = ttl_s

    def key(self, tenant: str, models: list[str], messages: list[dict[str, str]], params: dict[str, Any]) -> str:
        material = json.dumps([tenant, sorted(models), messages, params], sort_keys=True)
        return f"{self.prefix}:{hashlib.sha256(material.encode()).hexdigest()}"

    def get(self, key: str) -> dict[str, Any] | None:
        if not self.ttl_s:
            return None
        raw = self.redis.get(key)
        return None if raw is None else dict(json.loads(raw))

    def put(self, key: str, value: dict[str, Any]) -> None:
        if self.ttl_s:
            self.redis.set(key, json.dumps(value), ex=self.ttl_s)
