"""Load balancing across the deployments of a tier, with state shared by every process in Redis.

Policies: round robin (equal turns, blind to load), least connections (fewest calls in
flight per unit of weight), latency-aware (power of two random choices, each scored by
its peak-EWMA latency times its load). The peak-EWMA latency is the larger of the EWMA
of completed calls' durations and the age of the deployment's oldest call still in
flight, so a deployment that has stalled loses traffic before its slow call returns
(the Finagle/Linkerd "peak EWMA" idea). Latency estimates expire after
`latency_memory_s` without a new sample: a deployment that was slow is measured afresh
and can win traffic back.

Calls in flight are leases, not counters: a sorted set per deployment of lease id ->
expiry (the deployment's timeout plus a margin), and one of lease id -> start time. A
process that dies mid-call leaves a lease that expires, so its calls stop counting.

Health: consecutive failures open a circuit for a cooldown that doubles on each
reopening (up to a maximum); once it expires one probe call is let through (half-open)
and its result closes or reopens the circuit; a 429 opens it for the provider's
Retry-After.

Latency outliers, for every policy (Envoy's outlier ejection, on latency as Finagle and
Linkerd do): a deployment whose peak-EWMA latency exceeds `outlier_factor` x the best
among the tier's other closed deployments, measured over at least `outlier_min_samples`
calls, is skipped. Least connections alone would keep sending a 10x slower deployment
about 1/21 of the calls, which no p99 hides. The best deployment is never an outlier,
so something always stays in rotation. An ejected deployment with no call in flight
gets one probe call once its last sample is `outlier_probe_s` old, and a probe's
duration replaces its EWMA instead of blending into it: its old samples describe the
deployment before it lost its traffic, and a recovered one should win traffic back on
its first fast answer.

Round trips: a call costs two on the happy path, each one Lua script run atomically in
Redis: `pick` (prune expired leases, read load, latency and circuits, choose per policy,
admit, take the lease; a deployment with `max_concurrency` live leases is not admitted) and
`succeeded`/`failed` (return the lease, update the latency or
the circuit). Time is Redis's clock, so every process agrees on lease ages.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from routing.redis_loop import LoopRedis

Policy = Literal["round_robin", "least_connections", "latency_aware"]
# "in_order": the candidates as given, for a retry on the deployment already chosen.
_Order = Policy | Literal["in_order"]

# "latency" is a hash (ewma, n samples, at = last sample's time in ms); its name differs from the
# string key of earlier versions so that a rolling upgrade never reads one as the other.
_CANDIDATE_KEYS = ("leases", "starts", "latency", "open", "failures", "probe")
_FINISH_KEYS = ("leases", "starts", "latency", "failures", "open", "probe", "cooldown")

_COMMON = """
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Leases whose holder never returned them (a crashed process) stop counting here.
local function prune(leases, starts, now)
  local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  for i = 1, #expired, 500 do
    redis.call('ZREM', starts, unpack(expired, i, math.min(i + 499, #expired)))
  end
  if #expired > 0 then redis.call('ZREMRANGEBYSCORE', leases, '-inf', now) end
end

local function oldest_start(starts)
  local first = redis.call('ZRANGE', starts, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) end
  return nil
end
"""

# KEYS[1]: the group's round-robin counter; then per candidate, in _CANDIDATE_KEYS order:
# leases, starts, latency, open, failures, probe.
# ARGV: order, failures_to_open, probe_ms, lease id, r1, r2, outlier_factor, outlier_min_samples,
#       outlier_probe_ms; then per candidate: name, weight, lease_ms, tie, max_concurrency.
# The random numbers (r1, r2 for the two choices, tie per candidate) come from the caller's Random, so a
# seeded one makes picks reproducible.
# Returns {name, probe (0/1)} for the admitted candidate, whose lease is taken, or nil.
_PICK = (
    _COMMON
    + """
local now = now_ms()
local order_by, failures_to_open, probe_ms = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local lease, r1, r2 = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local outlier_factor, outlier_min_samples, outlier_probe_ms = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local cands = {}
for i = 1, (#ARGV - 9) / 5 do
  local k, a = 1 + (i - 1) * 6, 9 + (i - 1) * 5
  local c = {name = ARGV[a + 1], weight = math.max(tonumber(ARGV[a + 2]), 1e-9), lease_ms = tonumber(ARGV[a + 3]),
             tie = tonumber(ARGV[a + 4]), leases = KEYS[k + 1], starts = KEYS[k + 2], latency = KEYS[k + 3],
             open = KEYS[k + 4], failures = KEYS[k + 5], probe = KEYS[k + 6]}
  prune(c.leases, c.starts, now)
  c.load = redis.call('ZCARD', c.leases)
  c.full = c.load >= tonumber(ARGV[a + 5])  -- at max_concurrency: no new lease until one returns
  local measured = redis.call('HMGET', c.latency, 'ewma', 'n', 'at')
  c.ewma, c.samples, c.measured_at = tonumber(measured[1]), tonumber(measured[2] or '0'), tonumber(measured[3] or '0')
  c.oldest = oldest_start(c.starts)
  c.is_open = redis.call('EXISTS', c.open) == 1
  c.closed = not c.is_open and tonumber(redis.call('GET', c.failures) or '0') < failures_to_open
  -- Peak EWMA, for measured deployments only.
  if c.ewma then c.estimate = math.max(c.ewma, c.oldest and (now - c.oldest) / 1000 or 0) end
  cands[i] = c
end

local function admit(c, verdict)
  local expiry = now + c.lease_ms
  redis.call('ZADD', c.leases, expiry, lease)
  redis.call('ZADD', c.starts, now, lease)
  local last = redis.call('ZRANGE', c.leases, -1, -1, 'WITHSCORES')
  local at = string.format('%d', tonumber(last[2]))
  redis.call('PEXPIREAT', c.leases, at)
  redis.call('PEXPIREAT', c.starts, at)
  return {c.name, verdict}
end

local skipped = {}
for _, c in ipairs(cands) do
  if c.closed and c.estimate and c.samples >= outlier_min_samples then
    local best = nil
    for _, o in ipairs(cands) do
      if o ~= c and o.closed and o.estimate and (best == nil or o.estimate < best) then best = o.estimate end
    end
    if best and c.estimate > outlier_factor * best then
      -- Calls in flight will measure it anyway; otherwise one probe per outlier_probe_ms.
      if c.load == 0 and now - c.measured_at >= outlier_probe_ms then return admit(c, 1) end
      skipped[c] = true
    end
  end
end

local function by_cost(x, y)
  if x.cost ~= y.cost then return x.cost < y.cost end
  return x.tie < y.tie
end

local function weighted(r, skip)
  local total, last = 0, nil
  for _, c in ipairs(cands) do if c ~= skip then total = total + c.weight end end
  local x = r * total
  for _, c in ipairs(cands) do
    if c ~= skip then
      last = c
      x = x - c.weight
      if x < 0 then return c end
    end
  end
  return last
end

local order = cands
local turns = {}
if order_by == 'round_robin' then
  -- Skipped deployments take no turns, so the rest share their calls evenly.
  for _, c in ipairs(cands) do
    if not skipped[c] then
      for _ = 1, math.max(1, math.floor(c.weight + 0.5)) do turns[#turns + 1] = c end
    end
  end
end
if #turns > 0 then
  local start = redis.call('INCR', KEYS[1]) % #turns
  order = {}
  for j = 0, #turns - 1 do order[#order + 1] = turns[(start + j) % #turns + 1] end
elseif order_by == 'least_connections' then
  for _, c in ipairs(cands) do c.cost = c.load / c.weight end
  order = {unpack(cands)}
  table.sort(order, by_cost)
elseif order_by == 'latency_aware' and #cands > 1 then
  local best = nil
  for _, c in ipairs(cands) do
    if c.ewma and (best == nil or c.ewma < best) then best = c.ewma end
  end
  for _, c in ipairs(cands) do
    -- Unmeasured: assume the best, so it gets measured.
    local estimate = c.ewma or best or 0
    if c.oldest then estimate = math.max(estimate, (now - c.oldest) / 1000) end
    c.cost = (estimate + 0.001) * (c.load + 1) / c.weight
  end
  -- Two weighted random candidates, the cheaper first; the rest follow by cost, so an
  -- unhealthy pick still leaves a healthy answer.
  local first = weighted(r1, nil)
  local second = weighted(r2, first)
  local pair, rest = {first, second}, {}
  table.sort(pair, by_cost)
  for _, c in ipairs(cands) do if c ~= first and c ~= second then rest[#rest + 1] = c end end
  table.sort(rest, by_cost)
  order = {pair[1], pair[2], unpack(rest)}
end

for _, c in ipairs(order) do
  if not skipped[c] and not c.full then
    if c.closed then return admit(c, 0) end
    -- The probe's slot lasts as long as its call may (its lease), so a slow probe is not joined by a second.
    if not c.is_open and redis.call('SET', c.probe, '1', 'NX', 'PX', math.max(tonumber(probe_ms), c.lease_ms)) then
      return admit(c, 1)  -- half-open: this call is the one probe
    end
    skipped[c] = true  -- round robin lists a weighted candidate more than once
  end
end
return nil
"""
)

# KEYS: leases, starts, latency, failures, open, probe, cooldown.
# ARGV: lease id, outcome (ok | failed | retry_after | release), latency_s, alpha, memory_ms,
#       failures_to_open, cooldown_s, max_cooldown_s, retry_after_ms, probe (0/1).
# Returns 1 when the circuit is now open because of this call.
_FINISH = (
    _COMMON
    + """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local outcome = ARGV[2]
if outcome == 'ok' then
  local x, alpha = tonumber(ARGV[3]), tonumber(ARGV[4])
  local old = redis.call('HGET', KEYS[3], 'ewma')
  local new = x
  if old and ARGV[10] ~= '1' then new = alpha * x + (1 - alpha) * tonumber(old) end
  redis.call('HSET', KEYS[3], 'ewma', tostring(new), 'at', string.format('%d', now_ms()))
  redis.call('HINCRBY', KEYS[3], 'n', 1)
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
  return 0
elseif outcome == 'release' then
  -- A probe whose caller went away has proved nothing: the next call may probe at once.
  if ARGV[10] == '1' then redis.call('DEL', KEYS[6]) end
  return 0
elseif outcome == 'retry_after' then
  redis.call('SET', KEYS[5], '1', 'PX', ARGV[9])
  redis.call('DEL', KEYS[6])
  return 1
elseif outcome == 'failed' then
  if redis.call('INCR', KEYS[4]) < tonumber(ARGV[6]) then return 0 end
  -- Calls that were in flight when it opened fail too: they find it open, and only a failed probe reopens it.
  if redis.call('EXISTS', KEYS[5]) == 1 and ARGV[10] ~= '1' then return 1 end
  -- Each reopening doubles the cooldown, up to the maximum.
  local previous = tonumber(redis.call('GET', KEYS[7]) or (tonumber(ARGV[7]) / 2))
  local cooldown = math.min(tonumber(ARGV[8]), previous * 2)
  redis.call('SET', KEYS[7], tostring(cooldown))
  redis.call('SET', KEYS[5], '1', 'PX', math.max(1, math.floor(cooldown * 1000)))
  redis.call('DEL', KEYS[6])
  return 1
end
return 0
"""
)

# KEYS per name: leases, starts, latency, open, failures. ARGV: failures_to_open.
# Returns per name: status, calls in flight, EWMA seconds ('' when unknown), oldest call's age in ms ('' when none).
_SNAPSHOT = (
    _COMMON
    + """
local now = now_ms()
local out = {}
for i = 1, #KEYS, 5 do
  prune(KEYS[i], KEYS[i + 1], now)
  local status = 'closed'
  if redis.call('EXISTS', KEYS[i + 3]) == 1 then
    status = 'open'
  elseif tonumber(redis.call('GET', KEYS[i + 4]) or '0') >= tonumber(ARGV[1]) then
    status = 'half-open'
  end
  local oldest = oldest_start(KEYS[i + 1])
  out[#out + 1] = status
  out[#out + 1] = tostring(redis.call('ZCARD', KEYS[i]))
  out[#out + 1] = redis.call('HGET', KEYS[i + 2], 'ewma') or ''
  out[#out + 1] = oldest and tostring(now - oldest) or ''
end
return out
"""
)


class Candidate(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...

    @property
    def timeout_s(self) -> float: ...

    @property
    def max_concurrency(self) -> int: ...


class HealthSettings(BaseModel):
    """Circuit, latency and outlier settings (the fleet file's `health`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    failures_to_open: int = Field(default=3, ge=1, description="Consecutive failures that open a circuit.")
    cooldown_s: float = Field(default=10.0, gt=0, description="First open period; doubles on each reopening.")
    max_cooldown_s: float = Field(default=120.0, gt=0)
    probe_timeout_s: float = Field(
        default=30.0, gt=0, description="How long a half-open probe holds its slot, at least (its lease, if longer)."
    )
    ewma_alpha: float = Field(default=0.3, gt=0, le=1, description="Weight of a new call in the latency EWMA.")
    latency_memory_s: float = Field(default=30.0, gt=0, description="A latency estimate expires this long unfed.")
    lease_margin_s: float = Field(
        default=5.0, ge=0, description="A lease outlives its call's timeout by this much: only a dead holder's expires."
    )
    outlier_factor: float = Field(
        default=3.0, gt=1, description="Skip a deployment this many times slower than the tier's best (peak-EWMA)."
    )
    outlier_min_samples: int = Field(default=5, ge=1, description="Calls measured before a deployment can be skipped.")
    outlier_probe_s: float = Field(
        default=10.0, gt=0, description="A skipped deployment gets one probe call once its last sample is this old."
    )

    @model_validator(mode="after")
    def _probes_outrun_memory(self) -> HealthSettings:
        # Probes keep a skipped deployment's estimate alive; if it expired first, the deployment would look
        # unmeasured and take its full share again before being skipped anew.
        if self.outlier_probe_s >= self.latency_memory_s:
            raise ValueError("outlier_probe_s must be below latency_memory_s")
        return self


@dataclass(frozen=True)
class Lease:
    """One call in flight on `name`; return it with FleetState.succeeded/failed/release."""

    name: str
    id: str
    probe: bool


@dataclass(frozen=True)
class Health:
    status: str  # closed, open or half-open
    in_flight: int
    ewma_s: float | None
    oldest_in_flight_s: float | None


class FleetState:
    """Leases, latency, failures and circuits, in Redis under `prefix`, shared by every process."""

    def __init__(self, redis: LoopRedis, prefix: str, health: HealthSettings | None = None) -> None:
        self.redis = redis
        self.prefix = f"{prefix}:fleet"
        self.health = health or HealthSettings()

    async def aclose(self) -> None:
        """Close the current loop's Redis pool (shared with the ledger and cache)."""
        await self.redis.aclose()

    def _key(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    async def pick(self, group: str, order: _Order, pool: Sequence[Candidate], rng: random.Random) -> Lease | None:
        """Choose by `order` among `pool`, admit by circuit state and take a lease: one round trip."""
        if not pool:
            return None
        h = self.health
        keys = [self._key("rr", group)] + [self._key(kind, c.name) for c in pool for kind in _CANDIDATE_KEYS]
        lease = uuid.uuid4().hex
        args: list[str | float] = [order, h.failures_to_open, int(h.probe_timeout_s * 1000), lease, rng.random(),
                                   rng.random(), h.outlier_factor, h.outlier_min_samples,
                                   int(h.outlier_probe_s * 1000)]  # fmt: skip
        for c in pool:
            args += [c.name, c.weight, int((c.timeout_s + h.lease_margin_s) * 1000), rng.random(), c.max_concurrency]
        picked = await self.redis.script(_PICK)(keys=keys, args=args)
        if picked is None:
            return None
        name, probe = picked
        return Lease(name.decode() if isinstance(name, bytes) else str(name), lease, bool(probe))

    async def succeeded(self, lease: Lease, latency_s: float) -> None:
        """Return the lease, fold the call's duration into the EWMA (a probe's replaces it) and close the circuit."""
        await self._finish(lease, "ok", latency_s=latency_s)

    async def failed(self, lease: Lease, retry_after_s: float | None = None) -> bool:
        """Return the lease and count a failure (or open for Retry-After); True when the circuit is open."""
        if retry_after_s is not None:
            return await self._finish(lease, "retry_after", retry_after_ms=max(1, int(retry_after_s * 1000)))
        return await self._finish(lease, "failed")

    async def release(self, lease: Lease) -> None:
        """Return the lease with no verdict on the deployment (the caller went away)."""
        await self._finish(lease, "release")

    async def _finish(self, lease: Lease, outcome: str, latency_s: float = 0.0, retry_after_ms: int = 0) -> bool:
        h, name = self.health, lease.name
        keys = [self._key(kind, name) for kind in _FINISH_KEYS]
        memory_ms = int(h.latency_memory_s * 1000)
        args: list[str | float] = [lease.id, outcome, latency_s, h.ewma_alpha, memory_ms, h.failures_to_open,
                                   h.cooldown_s, h.max_cooldown_s, retry_after_ms, int(lease.probe)]  # fmt: skip
        return bool(await self.redis.script(_FINISH)(keys=keys, args=args))

    async def snapshot(self, names: Sequence[str]) -> dict[str, Health]:
        """Status, live leases, EWMA and oldest call's age per deployment, in one round trip."""
        if not names:
            return {}
        keys = [self._key(kind, n) for n in names for kind in ("leases", "starts", "latency", "open", "failures")]
        raw = await self.redis.script(_SNAPSHOT)(keys=keys, args=[self.health.failures_to_open])
        values = [v.decode() if isinstance(v, bytes) else str(v) for v in raw]
        out: dict[str, Health] = {}
        for i, name in enumerate(names):
            status, count, ewma, age_ms = values[4 * i : 4 * i + 4]
            out[name] = Health(status, int(count), float(ewma) if ewma else None,
                               int(age_ms) / 1000 if age_ms else None)  # fmt: skip
        return out


class Balancer:
    def __init__(self, state: FleetState, policy: Policy, rng: random.Random | None = None) -> None:
        self.state = state
        self.policy = policy
        self._rng = rng or random.Random()

    async def pick(
        self, group: str, candidates: Sequence[Candidate], exclude: set[str] | frozenset[str] = frozenset()
    ) -> Lease | None:
        """A lease on a deployment for the next call, or None when none is healthy (the caller falls back)."""
        pool = sorted((c for c in candidates if c.name not in exclude), key=lambda c: c.name)
        return await self.state.pick(group, self.policy, pool, self._rng)

    async def again(self, candidate: Candidate) -> Lease | None:
        """A lease on the same deployment for a retry; None when its circuit opened meanwhile."""
        return await self.state.pick("", "in_order", [candidate], self._rng)
