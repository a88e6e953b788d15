"""Usage ledger and response cache on redis.asyncio against a real Valkey, and `orchestrion router usage`."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from routing.ledger import Ledger, ResponseCache
from routing.redis_loop import LoopRedis


def test_concurrent_records_add_up_exactly_across_event_loops(valkey: str, key_prefix: str) -> None:
    redis_loop = LoopRedis(valkey)
    ledger = Ledger(redis_loop, key_prefix)

    async def burst() -> None:
        await asyncio.gather(*(ledger.record("acme", "small", 10, 3, 0.25) for _ in range(200)))
        await ledger.record("acme", "large", 1, 1, 1.5)

    asyncio.run(burst())  # a loop of its own, as a Celery task runs its calls: a pool of its own
    usage = asyncio.run(ledger.usage("acme"))
    assert usage == {
        "small": {"calls": 200, "tokens_in": 2000, "tokens_out": 600, "cost_usd": pytest.approx(50.0)},
        "large": {"calls": 1, "tokens_in": 1, "tokens_out": 1, "cost_usd": 1.5},
    }
    assert asyncio.run(ledger.spent("acme")) == pytest.approx(51.5)
    assert asyncio.run(ledger.usage("globex")) == {}


def test_cache_returns_what_was_put_for_the_same_request_only(valkey: str, key_prefix: str) -> None:
    redis_loop = LoopRedis(valkey)
    cache, off = ResponseCache(redis_loop, key_prefix, 60), ResponseCache(redis_loop, f"{key_prefix}-off", 0)
    ask = [{"role": "user", "content": "hi"}]
    key = cache.key("acme", ["m2", "m1"], ask, {"max_tokens": 8})

    async def scenario() -> None:
        try:
            assert await cache.get(key) is None
            await cache.put(key, {"text": "hello"})
            assert await cache.get(cache.key("acme", ["m1", "m2"], ask, {"max_tokens": 8})) == {"text": "hello"}
            assert await cache.get(cache.key("globex", ["m1", "m2"], ask, {"max_tokens": 8})) is None
            assert await redis_loop.client().ttl(key) > 0
            off_key = off.key("acme", ["m1"], ask, {})
            await off.put(off_key, {"text": "x"})  # a TTL of 0 disables the cache
            assert await off.get(off_key) is None and await redis_loop.client().exists(off_key) == 0
        finally:
            await redis_loop.aclose()

    asyncio.run(scenario())


def test_router_usage_command_reads_the_ledger(valkey: str, key_prefix: str, tmp_path: Path) -> None:
    ledger = Ledger(LoopRedis(valkey), key_prefix)
    asyncio.run(ledger.record("acme", "small", 12, 4, 0.5))
    env = {**os.environ, "REDIS_URL": valkey, "ORCHESTRION_REDIS__KEY_PREFIX": key_prefix,
           "ORCHESTRION_DATA_DIR": str(tmp_path)}  # fmt: skip
    done = subprocess.run([sys.executable, "-m", "orchestrion", "router", "usage", "--tenant", "acme"], env=env,
                          capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[2])  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["tiers"] == {"small": {"calls": 1, "tokens_in": 12, "tokens_out": 4, "cost_usd": 0.5}}
    assert out["total_cost_usd"] == 0.5
