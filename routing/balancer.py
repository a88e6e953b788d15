"""Load balancing across the deployments of a tier, with state shared by every process in Redis.

Policies: round robin (equal turns, blind to load), least connections (fewest calls in
flight per unit of weight), latency-aware (power of two random choices, each scored
by its EWMA latency times its load). Health: consecutive failures open a circuit for a
cooldown; once it expires one probe call is let through (half-open) and its result
closes or reopens the circuit; a 429 opens it for the provider's Retry-After.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import redis

Policy = Literal["round_robin", "least_connections", "latency_aware"]

# EWMA update in one round trip, so concurrent processes never lose an update.
_EWMA = """
local old = redis.call('GET', KEYS[1])
local x = tonumber(ARGV[1])
local alpha = tonumber(ARGV[2])
local new = x
if old then new = alpha * x + (1 - alpha) * tonumber(old) end
redis.call('SET', KEYS[1], tostring(new), 'PX', ARGV[3])
return tostring(new)
"""


class Weighted(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...


@dataclass(frozen=True)
class HealthSettings:
    failures_to_open: int = 3
    cooldown_s: float = 10.0
    max_cooldown_s: float = 120.0
    probe_timeout_s: float = 30.0
    ewma_alpha: float = 0.3
    latency_memory_s: float = 30.0


class FleetState:
    """In-flight counts, latency, failures and circuits, in Redis under `prefix`."""

    def __init__(self, client: redis.Redis, prefix: str, health: HealthSettings | None = None) -> None:
        self.redis = client
        self.prefix = f"{prefix}:fleet"
        self.health = health or HealthSettings()
        self._ewma = client.register_script(_EWMA)

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    # load
    def acquire(self, name: str) -> None:
        self.redis.incr(self._key("inflight", name))

    def release(self, name: str) -> None:
        key = self._key("inflight", name)
        if int(self.redis.decr(key)) < 0:  # never below zero, whatever the interleaving
            self.redis.set(key, 0)

    def in_flight(self, names: Sequence[str]) -> dict[str, int]:
        values = self.redis.mget([self._key("inflight", n) for n in names])
        return {n: max(0, int(v or 0)) for n, v in zip(names, values, strict=True)}

    def record_latency(self, name: str, seconds: float) -> None:
        # The estimate expires unless refreshed: a deployment that was slow and gets no traffic
        # is forgotten, measured afresh, and so can win traffic back once it has recovered.
        ttl_ms = int(self.health.latency_memory_s * 1000)
        self._ewma(keys=[self._key("ewma", name)], args=[seconds, self.health.ewma_alpha, ttl_ms])

    def latencies(self, names: Sequence[str]) -> dict[str, float | None]:
        values = self.redis.mget([self._key("ewma", n) for n in names])
        return {n: (float(v) if v is not None else None) for n, v in zip(names, values, strict=True)}

    def next_turn(self, group: str) -> int:
        return int(self.redis.incr(self._key("rr", group)))

    # health
    def record_success(self, name: str) -> None:
        self.redis.delete(self._key("failures", name), self._key("open", name), self._key("probe", name),
                          self._key("cooldown", name))  # fmt: skip

    def record_failure(self, name: str) -> bool:
        """Count a failure; True when it opened the circuit."""
        failures = int(self.redis.incr(self._key("failures", name)))
        if failures < self.health.failures_to_open:
            return False
        # Each reopening doubles the cooldown, up to the maximum.
        previous = float(self.redis.get(self._key("cooldown", name)) or self.health.cooldown_s / 2)
        cooldown = min(self.health.max_cooldown_s, previous * 2)
        self.redis.set(self._key("cooldown", name), cooldown)
        self.open_for(name, cooldown)
        return True

    def open_for(self, name: str, seconds: float) -> None:
        self.redis.set(self._key("open", name), "1", px=max(1, int(seconds * 1000)))
        self.redis.delete(self._key("probe", name))

    def status(self, name: str) -> str:
        if self.redis.exists(self._key("open", name)):
            return "open"
        if int(self.redis.get(self._key("failures", name)) or 0) >= self.health.failures_to_open:
            return "half-open"
        return "closed"

    def admit(self, name: str) -> bool:
        """May a call go to `name` now? Closed: yes. Open: no. Half-open: one probe at a time."""
        state = self.status(name)
        if state == "closed":
            return True
        if state == "open":
            return False
        return bool(self.redis.set(self._key("probe", name), "1", nx=True, px=int(self.health.probe_timeout_s * 1000)))


class Balancer:
    def __init__(self, state: FleetState, policy: Policy, rng: random.Random | None = None) -> None:
        self.state = state
        self.policy = policy
        self._rng = rng or random.Random()

    def pick(
        self, group: str, candidates: Sequence[Weighted], exclude: set[str] | frozenset[str] = frozenset()
    ) -> Weighted | None:
        """A deployment for the next call, or None when none is healthy (the caller falls back)."""
        pool = sorted((c for c in candidates if c.name not in exclude), key=lambda c: c.name)
        if self.policy == "round_robin":
            return self._round_robin(group, pool)
        if self.policy == "least_connections":
            return self._least_connections(pool)
        return self._latency_aware(pool)

    def _admitted(self, ordered: Sequence[Weighted]) -> Weighted | None:
        for candidate in ordered:
            if self.state.admit(candidate.name):
                return candidate
        return None

    def _round_robin(self, group: str, pool: Sequence[Weighted]) -> Weighted | None:
        if not pool:
            return None
        turns = [c for c in pool for _ in range(max(1, round(c.weight)))]
        start = self.state.next_turn(group) % len(turns)
        return self._admitted(turns[start:] + turns[:start])

    def _least_connections(self, pool: Sequence[Weighted]) -> Weighted | None:
        loads = self.state.in_flight([c.name for c in pool])
        ties = {c.name: self._rng.random() for c in pool}
        return self._admitted(sorted(pool, key=lambda c: (loads[c.name] / max(c.weight, 1e-9), ties[c.name])))

    def _latency_aware(self, pool: Sequence[Weighted]) -> Weighted | None:
        if len(pool) < 2:
            return self._admitted(pool)
        names = [c.name for c in pool]
        loads, latency = self.state.in_flight(names), self.state.latencies(names)
        known = [v for v in latency.values() if v is not None]
        default = min(known) if known else 0.0  # unmeasured: assume the best, so it gets measured

        def cost(c: Weighted) -> float:
            return ((latency[c.name] or default) + 1e-3) * (loads[c.name] + 1) / max(c.weight, 1e-9)

        # Power of two choices: two weighted random candidates, the cheaper wins; the rest
        # follow by cost, so an unhealthy pick still leaves a healthy answer.
        first, second = self._two(pool)
        rest = sorted((c for c in pool if c not in (first, second)), key=cost)
        return self._admitted([*sorted((first, second), key=cost), *rest])

    def _two(self, pool: Sequence[Weighted]) -> tuple[Weighted, Weighted]:
        weights = [max(c.weight, 1e-9) for c in pool]
        first = self._rng.choices(list(pool), weights)[0]
        others = [c for c in pool if c is not first]
        second = self._rng.choices(others, [max(c.weight, 1e-9) for c in others])[0]
        return first, second
