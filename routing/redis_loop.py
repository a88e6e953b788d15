"""redis.asyncio clients, one per event loop, shared by the balancer, the ledger and the response cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

_POOL_SIZE = 32
_POOL_WAIT_S = 10.0


@dataclass
class _LoopClient:
    client: aioredis.Redis
    scripts: dict[str, AsyncScript] = field(default_factory=dict)


class LoopRedis:
    """An asyncio Redis connection belongs to the loop it was made in (a Celery task runs its calls in a loop
    of its own), so there is one pool per loop, made on first use; those of closed loops are dropped when the
    next loop connects."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._loops: dict[asyncio.AbstractEventLoop, _LoopClient] = {}

    def _current(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        if loop not in self._loops:
            for dead in [other for other in self._loops if other.is_closed()]:
                del self._loops[dead]
            # Callers queue for a connection instead of failing when a burst of calls finishes at once.
            pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=_POOL_SIZE, timeout=_POOL_WAIT_S)
            self._loops[loop] = _LoopClient(aioredis.Redis.from_pool(pool))
        return self._loops[loop]

    def client(self) -> aioredis.Redis:
        return self._current().client

    def script(self, source: str) -> AsyncScript:
        """`source` registered on this loop's client (loaded into Redis on its first run)."""
        current = self._current()
        if source not in current.scripts:
            current.scripts[source] = current.client.register_script(source)
        return current.scripts[source]

    async def aclose(self) -> None:
        """Close the current loop's pool."""
        current = self._loops.pop(asyncio.get_running_loop(), None)
        if current is not None:
            await current.client.aclose()
