"""Offload idle tenants: mark their Weaviate shards INACTIVE so their files are closed.

Every ACTIVE tenant keeps its shard's files open in Weaviate: bench/retrieval's embedded
server ran out of file descriptors (20,000) at about 476 of 1,000 active tenants. Idle
tenants are therefore set INACTIVE; the collections are created with auto tenant
activation, so the next query or write to one wakes it (about 13 ms, measured in
bench/retrieval) and nobody has to know its state.

Last use is kept in one Redis sorted set shared by every process. Each process writes a
tenant's timestamp at most once per `touch_every_s`, so recording use costs nothing on
the hot path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import redis
from weaviate.classes.tenants import Tenant, TenantActivityStatus

from rag.store import ChunkStore

BATCH = 100  # tenants per Weaviate update call


class TenantActivity:
    def __init__(
        self, client: redis.Redis, prefix: str, touch_every_s: float = 60.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._redis = client
        self._key = f"{prefix}:tenant-last-use"
        self._touch_every_s = touch_every_s
        self._clock = clock
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, tenant: str) -> None:
        now = self._clock()
        with self._lock:
            if now - self._touched.get(tenant, float("-inf")) < self._touch_every_s:
                return
            self._touched[tenant] = now
        self._redis.zadd(self._key, {tenant: now})

    def last_use(self, tenants: Iterable[str]) -> dict[str, float | None]:
        names = list(tenants)
        if not names:
            return {}
        return dict(zip(names, self._redis.zmscore(self._key, names), strict=True))

    def start_clocks(self, tenants: Iterable[str]) -> None:
        """Count idle time from now for tenants with no recorded use; recorded ones keep theirs."""
        now = self._clock()
        names = list(tenants)
        if names:
            self._redis.zadd(self._key, dict.fromkeys(names, now), nx=True)

    def forget(self, tenant: str) -> None:
        with self._lock:
            self._touched.pop(tenant, None)
        self._redis.zrem(self._key, tenant)


def offload_idle(store: ChunkStore, activity: TenantActivity, idle_s: float) -> list[str]:
    """Set INACTIVE every ACTIVE tenant of the store's collections unused for `idle_s` or more;
    returns their names, sorted.

    A tenant with no recorded use (activated by hand, or its record lost with a Redis that
    restarted empty) starts its idle clock now rather than counting as idle forever: otherwise
    one pass after a Redis restart would put every tenant to sleep at once, and the next query
    to each would pay for waking it."""
    cutoff = time.time() - idle_s
    offloaded: set[str] = set()
    for name in (store.chunks_name, store.docs_name):
        tenants = store.client.collections.use(name).tenants
        active = [t for t, info in tenants.get().items() if info.activity_status == TenantActivityStatus.ACTIVE]
        last = activity.last_use(active)
        activity.start_clocks(t for t in active if last[t] is None)
        idle = [t for t in active if (used := last[t]) is not None and used <= cutoff]
        for start in range(0, len(idle), BATCH):
            batch = idle[start : start + BATCH]
            tenants.update([Tenant(name=t, activity_status=TenantActivityStatus.INACTIVE) for t in batch])
        offloaded.update(idle)
    return sorted(offloaded)
