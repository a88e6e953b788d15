"""Ingest jobs in Redis: state, progress, idempotency keys, the submitted bytes, and admission.

A job is found again by its idempotency key (the caller's, or tenant + content
hash), so submitting the same thing twice returns the same job. Every lookup is
scoped to the caller's tenant: another tenant's job id is simply not found.

Admission bounds the jobs accepted and not yet started, exactly and across processes:
one script claims a submission's keys and admits its new jobs, all or none, against
the limit. A job leaves the admitted set when a worker starts it. Between admission
and the producer's confirmed enqueue it is also in the enqueuing set, so the job of a
producer that died in between is found and enqueued by the next submission.

A refused submission is told when to come back from its place in a line of refused ones
and the pace at which workers start jobs, measured as they start them: about when its
turn comes, so a crowd of refused clients comes back spread out at the pace slots free up
rather than all together.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis
import redis.lock

from core.errors import NotFoundError, OrchestrionError

log = logging.getLogger(__name__)
# How long a producer may take from admission to a confirmed enqueue before another
# process takes the job over; a slow producer then costs a duplicate task (idempotent).
ENQUEUE_GRACE_S = 60.0
# A refused submission that has not come back this long after its Retry-After has given up: its place in
# the line goes, so it stops holding back the clients behind it and new ones.
LINE_GRACE_S = 30.0
RETRY_AFTER_MAX_S = 300
# A wait is told from the pace measured when it is told, and the client sleeps through it. That pace may be
# stale (measured in an earlier busy spell: other documents, cold workers) until jobs have waited a while
# without a break, so a wait is told as it is only up to a horizon: twice that while (at least
# HORIZON_MIN_S), at most the time the admitted jobs last at the pace (if it is half the real one, they run
# dry then), at most HORIZON_MAX_S. A longer wait is told shorter, growing with its log: the client comes
# back early and is told again, at the pace measured meanwhile, rather than sleep through its turn while
# the workers idle.
HORIZON_MIN_S = 5.0
HORIZON_MAX_S = 60.0
# How long one write of a document may hold its lock (a worker that died holding it frees it then), and how
# long another write of the same document waits for it.
DOCUMENT_LOCK_S = 600
DOCUMENT_LOCK_WAIT_S = 900.0
# Weight of the newest gap between job starts in the moving average of the pace (after a plain mean of the
# first few): a few seconds of starts at the bench's pace.
_DRAIN_SMOOTHING = 0.2

# A refused submission takes a place in a line of documents (a ZSET of '{identity}#{i}' per new document,
# scored by arrival), so the documents ahead of it are one ZRANK. Its identity is the idempotency key of its
# first new document, which the client's retries keep, also a retry of part of it. Once a line has formed, a
# newcomer is admitted only when there is room for the whole line as well: the waits told to those in line
# count on the slots that free up meanwhile. Those in line are admitted whenever they come back to room;
# one back early may pass others, who keep their place and are told again.
#
# KEYS: admitted, enqueuing, line, due, line seq, drain, mean job s, then per document: idempotency key,
# job key, payload key.
# ARGV: limit, job ttl s, enqueue grace s, job key prefix, line grace s, horizon min s, horizon max s, max
# wait s, jitter in [0, 1), replaced (a '1' or '0' per document: '1' when its finished job no longer holds its
# key, the stored document being another version or gone), then per document: job id, job record, payload.
# Returns {admitted (1/0), waiting before, new documents, jobs taken over, per document the existing job's
# record or '' for a new one (empty when refused), retry after s (refused), documents ahead in the line}.
_ADMIT = """
local admitted, enqueuing, line, due, line_seq, drain, mean_job = unpack(KEYS, 1, 7)
local limit, ttl, grace, job_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local line_grace, horizon_min, horizon_max = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local max_wait, jitter, replaced = tonumber(ARGV[8]), tonumber(ARGV[9]), ARGV[10]
local K, A = 7, 10
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
-- A job admitted longer ago than its record lives expired unstarted: its task was lost (a purged queue).
redis.call('ZREMRANGEBYSCORE', admitted, '-inf', now - ttl)
-- At most 10, a bound on what one caller pays for others' crashes; a fresh score claims them, so no
-- other caller takes the same ones over meanwhile.
local stale = redis.call('ZRANGEBYSCORE', enqueuing, '-inf', now - grace, 'LIMIT', 0, 10)
for _, id in ipairs(stale) do redis.call('ZADD', enqueuing, now, id) end

local function leave(me)
  redis.call('ZREM', due, me)
  local i = 1
  while redis.call('ZREM', line, me .. '#' .. i) == 1 do i = i + 1 end
end
for _, me in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now - line_grace, 'LIMIT', 0, 50)) do leave(me) end

local found, new = {}, {}
for i = 1, (#KEYS - K) / 3 do
  local holder = redis.call('GET', KEYS[K + 3 * i - 2])
  local record = holder and redis.call('GET', job_prefix .. holder)
  local state = record and cjson.decode(record).state
  -- Neither a failed job nor an expired one holds its key, nor a done one whose document was replaced or
  -- deleted since: this submission takes it over.
  if record and state ~= 'failed' and not (state == 'done' and string.sub(replaced, i, i) == '1') then
    found[i] = record
  else
    found[i] = ''
    new[#new + 1] = i
  end
end
local waiting = redis.call('ZCARD', admitted)
if #new == 0 then return {1, waiting, 0, stale, found, 0, 0} end
if #new > limit then return {0, waiting, #new, stale, {}, 0, 0} end  -- can never fit: takes no place

local me = KEYS[K + 3 * new[1] - 2]
local ahead = redis.call('ZRANK', line, me .. '#1')
local queued = ahead ~= false
if not queued then ahead = redis.call('ZCARD', line) end
if waiting + #new + (queued and 0 or ahead) <= limit then
  for _, i in ipairs(new) do
    local id = ARGV[A + 3 * i - 2]
    redis.call('SET', KEYS[K + 3 * i - 1], ARGV[A + 3 * i - 1], 'EX', ttl)
    redis.call('SET', KEYS[K + 3 * i], ARGV[A + 3 * i], 'EX', ttl)
    redis.call('SET', KEYS[K + 3 * i - 2], id, 'EX', ttl)
    redis.call('ZADD', admitted, now, id)
    redis.call('ZADD', enqueuing, now, id)
  end
  if queued then leave(me) end
  return {1, waiting, #new, stale, found, 0, 0}
end

if not queued then
  local last = redis.call('INCRBY', line_seq, #new)
  for i = 1, #new do redis.call('ZADD', line, last - #new + i, me .. '#' .. i) end
end
-- Seconds between job starts while jobs wait (the workers' pace, however many there are), at most a job's
-- run time: one slot is the slowest live workers drain, and a pace measured in an earlier busy spell may be
-- stale. Nothing measured yet: a job's run time, else a second.
local pace = redis.call('HMGET', drain, 'interval', 'at', 'busy', 'spell')
local interval = tonumber(pace[1])
local job_s = tonumber(redis.call('HGET', mean_job, 'mean'))
if job_s and (not interval or interval > job_s) then interval = job_s end
interval = math.max(interval or 1.0, 0.001)
-- No job started, since the oldest waiting job came, for twice as long as a job runs: the workers are
-- stalled or gone, and the wait grows with the stall, so the line backs off instead of polling.
local oldest = redis.call('ZRANGE', admitted, 0, 0, 'WITHSCORES')[2]
local since = now - math.max(tonumber(pace[2]) or 0, tonumber(oldest) or now)
if since > 2 * (job_s or interval) then interval = since end
-- Slots that must free up before this submission fits: the documents ahead of it take them first.
local wait = (ahead + #new - (limit - waiting)) * interval
-- How long jobs have waited without a break, as starts tell: how much the pace has been checked lately.
local spell = pace[3] == '1' and now - (tonumber(pace[4]) or now) or 0
local horizon = math.min(limit * interval, horizon_max, math.max(horizon_min, 2 * spell))
if wait > horizon then wait = horizon * (1 + math.log(wait / horizon)) end
local retry = math.max(1, math.min(max_wait, math.ceil(wait + jitter * interval)))
redis.call('ZADD', due, now + retry, me)
return {0, waiting, #new, stale, {}, retry, ahead}
"""

# KEYS: admitted, enqueuing, drain. ARGV: job id, smoothing.
# Returns 1 when the job left the admitted set now (a start), 0 when it was not there (a redelivery).
_STARTED = """
local admitted, enqueuing, drain = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
redis.call('ZREM', enqueuing, ARGV[1])
if redis.call('ZREM', admitted, ARGV[1]) == 0 then return 0 end
local at, busy, interval, samples = unpack(redis.call('HMGET', drain, 'at', 'busy', 'interval', 'samples'))
-- Only after a start that left jobs waiting is the gap to the next start the workers' pace, not a lull.
if busy == '1' then
  samples = math.min((tonumber(samples) or 0) + 1, 1000)
  local gap = now - tonumber(at)
  local weight = math.max(tonumber(ARGV[2]), 1 / samples)
  interval = interval and (1 - weight) * tonumber(interval) + weight * gap or gap
  redis.call('HSET', drain, 'interval', string.format('%.6f', interval), 'samples', samples)
end
local left = redis.call('ZCARD', admitted) > 0
if left and busy ~= '1' then redis.call('HSET', drain, 'spell', string.format('%.6f', now)) end
redis.call('HSET', drain, 'at', string.format('%.6f', now), 'busy', left and 1 or 0)
return 1
"""

# KEYS: job time. ARGV: a job's run time s, smoothing. One script, so concurrent workers' updates all count.
_JOB_TIME = """
local mean, samples = unpack(redis.call('HMGET', KEYS[1], 'mean', 'samples'))
samples = math.min((tonumber(samples) or 0) + 1, 1000)
local weight = math.max(tonumber(ARGV[2]), 1 / samples)
local seconds = tonumber(ARGV[1])
mean = mean and (1 - weight) * tonumber(mean) + weight * seconds or seconds
redis.call('HSET', KEYS[1], 'mean', string.format('%.6f', mean), 'samples', samples)
return samples
"""
# Weight of the newest run time in the moving average of a job's run time (after a plain mean of the first few).
_JOB_TIME_SMOOTHING = 0.2


class JobState(StrEnum):
    QUEUED = "queued"
    PARSING = "parsing"
    CHUNKING = "chunking"
    EMBEDDING = "embedding"
    STORING = "storing"
    DONE = "done"
    FAILED = "failed"


FINAL_STATES = {JobState.DONE, JobState.FAILED}


@dataclass
class JobStatus:
    job_id: str
    tenant: str
    doc_id: str
    state: JobState
    created_at: float
    updated_at: float
    chunks_total: int = 0
    chunks_done: int = 0
    error: str = ""
    result: dict[str, int] = field(default_factory=dict)
    content_hash: str = ""  # of the document and what it says about itself (rag/ingest.py)

    @property
    def progress(self) -> float:
        if self.state == JobState.DONE:
            return 1.0
        return self.chunks_done / self.chunks_total if self.chunks_total else 0.0

    def public(self) -> dict[str, Any]:
        """What a caller sees (no tenant: it is theirs)."""
        data = asdict(self)
        data.pop("tenant")
        data.pop("content_hash")
        data["state"] = self.state.value
        data["progress"] = round(self.progress, 4)
        return data


@dataclass(frozen=True)
class JobPayload:
    content: bytes
    meta: dict[str, Any]


@dataclass(frozen=True)
class Admission:
    """A submission's answer: each document's job and whether this submission made it, or a refusal."""

    jobs: list[tuple[JobStatus, bool]]  # empty when refused
    waiting: int  # jobs accepted and not yet started, before this submission
    new: int  # documents that needed a new job
    taken_over: list[str]  # admitted jobs whose producer never confirmed their enqueue: this caller's to enqueue
    retry_after_s: int = 0  # refused: when to come back, about when this submission's turn comes
    ahead: int = 0  # refused: documents of other refused submissions ahead of this one in the line

    @property
    def refused(self) -> bool:
        return not self.jobs


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        ttl_s: int,
        enqueue_grace_s: float = ENQUEUE_GRACE_S,
        line_grace_s: float = LINE_GRACE_S,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_s
        self._grace = enqueue_grace_s
        self._line_grace = line_grace_s
        self._admit = client.register_script(_ADMIT)
        self._started = client.register_script(_STARTED)
        self._job_time = client.register_script(_JOB_TIME)
        self._admitted = f"{prefix}:ingest:admitted"
        self._enqueuing = f"{prefix}:ingest:enqueuing"
        self._line = f"{prefix}:ingest:line"
        self._due = f"{prefix}:ingest:line:due"
        self._line_seq = f"{prefix}:ingest:line:seq"
        self._drain = f"{prefix}:ingest:drain"
        self._mean_job = f"{prefix}:ingest:job_time"

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _payload_key(self, job_id: str) -> str:
        return f"{self._prefix}:jobdata:{job_id}"

    def _idem_key(self, tenant: str, key: str) -> str:
        return f"{self._prefix}:idem:{tenant}:{key}"

    def admit(
        self,
        tenant: str,
        docs: Sequence[tuple[str, str, JobPayload]],
        limit: int,
        replaced: Sequence[bool] = (),
    ) -> Admission:
        """Each (doc id, idempotency key, payload) gets the job its key holds, or a new one. The new ones are
        admitted together only if the jobs accepted and not yet started stay within `limit`, and, for a
        submission not yet in the line of refused ones, only if the whole line fits too; else nothing is
        written but the submission's place in the line and when it is told to come back. A submission of
        nothing new is answered however busy. A failed or expired job does not hold its key: retrying works.
        Nor does a done job of a document marked `replaced` (by position in `docs`): the store holds another
        version of it, or none, so the same content is ingested again."""
        now = time.time()
        firsts: dict[str, tuple[JobStatus, JobPayload]] = {}
        renew: dict[str, bool] = {}
        for position, (doc_id, key, payload) in enumerate(docs):
            content_hash = str(payload.meta.get("content_hash", ""))
            status = JobStatus(uuid.uuid4().hex, tenant, doc_id, JobState.QUEUED, now, now, content_hash=content_hash)
            firsts.setdefault(key, (status, payload))
            renew.setdefault(key, position < len(replaced) and replaced[position])
        keys = [self._admitted, self._enqueuing, self._line, self._due, self._line_seq, self._drain, self._mean_job]
        args: list[bytes | str | float] = [limit, self._ttl, self._grace, self._job_key("")]
        args += [self._line_grace, HORIZON_MIN_S, HORIZON_MAX_S, RETRY_AFTER_MAX_S, random.random()]
        args.append("".join("1" if renew[key] else "0" for key in firsts))
        for key, (status, payload) in firsts.items():
            keys += [self._idem_key(tenant, key), self._job_key(status.job_id), self._payload_key(status.job_id)]
            args += [status.job_id, _encode(status), json.dumps(payload.meta).encode() + b"\n" + payload.content]
        ok, waiting, new, stale, found, retry_after, ahead = self._admit(keys=keys, args=args)
        taken_over = [_bytes(job_id).decode() for job_id in stale]
        if not ok:
            return Admission([], int(waiting), int(new), taken_over, int(retry_after), int(ahead))
        answers = {
            key: (_decode(_bytes(record)), False) if record else (status, True)
            for (key, (status, _)), record in zip(firsts.items(), found, strict=True)
        }
        jobs, seen = [], set()
        for _, key, _ in docs:
            status, created = answers[key]
            jobs.append((status, created and key not in seen))  # a document twice in one submission: one job
            seen.add(key)
        return Admission(jobs, int(waiting), int(new), taken_over)

    def held_by(self, tenant: str, keys: Sequence[str]) -> dict[str, JobStatus]:
        """The job each of these idempotency keys holds now, for those that hold one."""
        holders = self._redis.mget([self._idem_key(tenant, key) for key in keys])
        held = {key: _bytes(job_id).decode() for key, job_id in zip(keys, holders, strict=True) if job_id}
        records = self._redis.mget([self._job_key(job_id) for job_id in held.values()]) if held else []
        return {key: _decode(_bytes(raw)) for key, raw in zip(held, records, strict=True) if raw}

    @contextmanager
    def writing_document(self, tenant: str, doc_id: str) -> Iterator[None]:
        """Held while a job writes a document: two versions written at once would each keep their chunks.
        The later write waits, then makes the document exactly its own version."""
        lock = redis.lock.Lock(
            self._redis,
            f"{self._prefix}:doclock:{tenant}:{doc_id}",
            timeout=DOCUMENT_LOCK_S,
            blocking_timeout=DOCUMENT_LOCK_WAIT_S,
        )
        if not lock.acquire():
            raise OrchestrionError(f"another job kept writing document {doc_id!r} for over {DOCUMENT_LOCK_WAIT_S:.0f}s")
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:  # held past its timeout: another write may have begun meanwhile
                log.warning("the write of document %r of %s outlasted its lock", doc_id, tenant)

    def forget_tenant(self, tenant: str) -> int:
        """Drop a removed tenant's idempotency keys: a tenant added again under its name starts afresh.
        (Tenant names hold no glob characters.) Its job records expire with their TTL."""
        keys = list(self._redis.scan_iter(match=self._idem_key(tenant, "*"), count=1000))
        for start in range(0, len(keys), 500):
            self._redis.delete(*keys[start : start + 500])
        return len(keys)

    def enqueued(self, job_ids: Sequence[str]) -> None:
        """The producer confirms these jobs are on the queue: nobody needs to take them over."""
        if job_ids:
            self._redis.zrem(self._enqueuing, *job_ids)

    def started(self, job_id: str) -> bool:
        """A worker starts the job: its slot goes back, and the pace of starts while jobs wait is measured,
        for telling refused callers when their turn comes. False when the job had left already (a rerun)."""
        return bool(self._started(keys=[self._admitted, self._enqueuing, self._drain], args=[job_id, _DRAIN_SMOOTHING]))

    def free(self, job_id: str) -> None:
        """The job no longer waits to start (withdrawn, or gone): its slot goes back."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._admitted, job_id)
            pipe.zrem(self._enqueuing, job_id)
            pipe.execute()

    def waiting(self) -> int:
        """Jobs accepted and not yet started, the number `admit` holds to its limit."""
        return int(self._redis.zcard(self._admitted))

    def withdraw(self, status: JobStatus, idempotency_key: str) -> JobStatus:
        """Undo the admission of a job that could not be enqueued: a retry makes a new job.

        In this order so that a producer dying half-way leaves a job the next submission settles:
        still QUEUED, it is enqueued after the grace; FAILED, its slot is freed."""
        idem = self._idem_key(status.tenant, idempotency_key)
        if self._redis.get(idem) == status.job_id.encode():
            self._redis.delete(idem)
        self.update(status, state=JobState.FAILED, error="could not be queued")
        self.free(status.job_id)
        return status

    def get(self, tenant: str, job_id: str) -> JobStatus:
        status = self._load(job_id)
        if status is None or status.tenant != tenant:
            raise NotFoundError(f"no ingest job {job_id!r}")
        return status

    def load(self, job_id: str) -> JobStatus:
        """For the worker, which is given only a job id."""
        status = self._load(job_id)
        if status is None:
            raise NotFoundError(f"no ingest job {job_id!r} (expired?)")
        return status

    def update(self, status: JobStatus, **changes: Any) -> JobStatus:
        for name, value in changes.items():
            setattr(status, name, value)
        status.updated_at = time.time()
        self._redis.set(self._job_key(status.job_id), _encode(status), ex=self._ttl)
        return status

    def payload(self, job_id: str) -> JobPayload:
        raw = self._redis.get(self._payload_key(job_id))
        if raw is None:
            raise NotFoundError(f"the document of job {job_id!r} is gone (expired after {self._ttl}s)")
        meta, _, content = _bytes(raw).partition(b"\n")
        return JobPayload(content=content, meta=json.loads(meta))

    def drop_payload(self, job_id: str) -> None:
        self._redis.delete(self._payload_key(job_id))

    def record_duration(self, seconds: float) -> int:
        """Moving average of a job's run time: the slowest pace live workers drain the queue at. Returns how
        many run times it has taken in (at most 1,000)."""
        return int(self._job_time(keys=[self._mean_job], args=[seconds, _JOB_TIME_SMOOTHING]))

    def mean_job_seconds(self) -> float | None:
        """The moving average of a job's run time; None before any job has finished."""
        value = self._redis.hget(self._mean_job, "mean")
        return float(value) if value else None

    def drain_interval(self) -> float | None:
        """Measured seconds between job starts while jobs waited, a moving average; None before any."""
        value = self._redis.hget(self._drain, "interval")
        return float(value) if value else None

    def _load(self, job_id: str) -> JobStatus | None:
        raw = self._redis.get(self._job_key(job_id))
        return None if raw is None else _decode(_bytes(raw))


def _encode(status: JobStatus) -> bytes:
    return json.dumps({**asdict(status), "state": status.state.value}).encode()


def _decode(raw: bytes) -> JobStatus:
    data = json.loads(raw)
    data["state"] = JobState(data["state"])
    return JobStatus(**data)


def _bytes(value: bytes | str) -> bytes:
    """redis-py types replies as bytes or str; this client never decodes, so they are bytes."""
    return value.encode() if isinstance(value, str) else value
