"""Ingest jobs in Redis: state, progress, idempotency keys, the submitted bytes, and admission.

A job is found again by its idempotency key (the caller's, or tenant + content
hash), so submitting the same thing twice returns the same job. Every lookup is
scoped to the caller's tenant: another tenant's job id is simply not found.

Admission bounds the jobs accepted and not yet started, exactly and across processes:
one script claims a submission's keys and admits its new jobs, all or none, against
the limit. A job leaves the admitted set when a worker starts it. Between admission
and the producer's confirmed enqueue it is also in the enqueuing set, so the job of a
producer that died in between is found and enqueued by the next submission.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis

from core.errors import NotFoundError

# How long a producer may take from admission to a confirmed enqueue before another
# process takes the job over; a slow producer then costs a duplicate task (idempotent).
ENQUEUE_GRACE_S = 60.0

# KEYS: admitted, enqueuing, then per document: idempotency key, job key, payload key.
# ARGV: limit, job ttl s, enqueue grace s, job key prefix, then per document: job id, job record, payload.
# Returns {admitted (1/0), waiting before, new documents, jobs taken over, per document the existing
# job's record or '' for a new one (empty when refused)}.
_ADMIT = """
local admitted, enqueuing = KEYS[1], KEYS[2]
local limit, ttl, grace, job_prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1e6
-- A job admitted longer ago than its record lives expired unstarted: its task was lost (a purged queue).
redis.call('ZREMRANGEBYSCORE', admitted, '-inf', now - ttl)
-- At most 10, a bound on what one caller pays for others' crashes; a fresh score claims them, so no
-- other caller takes the same ones over meanwhile.
local stale = redis.call('ZRANGEBYSCORE', enqueuing, '-inf', now - grace, 'LIMIT', 0, 10)
for _, id in ipairs(stale) do redis.call('ZADD', enqueuing, now, id) end

local found, new = {}, {}
for i = 1, (#KEYS - 2) / 3 do
  local holder = redis.call('GET', KEYS[3 * i])
  local record = holder and redis.call('GET', job_prefix .. holder)
  -- Neither a failed job nor an expired one holds its key: this submission takes it over.
  if record and cjson.decode(record).state ~= 'failed' then
    found[i] = record
  else
    found[i] = ''
    new[#new + 1] = i
  end
end
local waiting = redis.call('ZCARD', admitted)
if #new > 0 and waiting + #new > limit then return {0, waiting, #new, stale, {}} end
for _, i in ipairs(new) do
  local id = ARGV[3 * i + 2]
  redis.call('SET', KEYS[3 * i + 1], ARGV[3 * i + 3], 'EX', ttl)
  redis.call('SET', KEYS[3 * i + 2], ARGV[3 * i + 4], 'EX', ttl)
  redis.call('SET', KEYS[3 * i], id, 'EX', ttl)
  redis.call('ZADD', admitted, now, id)
  redis.call('ZADD', enqueuing, now, id)
end
return {1, waiting, #new, stale, found}
"""


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

    @property
    def progress(self) -> float:
        if self.state == JobState.DONE:
            return 1.0
        return self.chunks_done / self.chunks_total if self.chunks_total else 0.0

    def public(self) -> dict[str, Any]:
        """What a caller sees (no tenant: it is theirs)."""
        data = asdict(self)
        data.pop("tenant")
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

    @property
    def refused(self) -> bool:
        return not self.jobs


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int, enqueue_grace_s: float = ENQUEUE_GRACE_S) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_s
        self._grace = enqueue_grace_s
        self._admit = client.register_script(_ADMIT)
        self._admitted = f"{prefix}:ingest:admitted"
        self._enqueuing = f"{prefix}:ingest:enqueuing"

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _payload_key(self, job_id: str) -> str:
        return f"{self._prefix}:jobdata:{job_id}"

    def _idem_key(self, tenant: str, key: str) -> str:
        return f"{self._prefix}:idem:{tenant}:{key}"

    def admit(self, tenant: str, docs: Sequence[tuple[str, str, JobPayload]], limit: int) -> Admission:
        """Each (doc id, idempotency key, payload) gets the job its key holds, or a new one. The new ones are
        admitted together only if the jobs accepted and not yet started stay within `limit`; else nothing is
        written. A submission of nothing new is answered however busy. A failed or expired job does not hold
        its key: retrying works."""
        now = time.time()
        firsts: dict[str, tuple[JobStatus, JobPayload]] = {}
        for doc_id, key, payload in docs:
            firsts.setdefault(key, (JobStatus(uuid.uuid4().hex, tenant, doc_id, JobState.QUEUED, now, now), payload))
        keys = [self._admitted, self._enqueuing]
        args: list[bytes | str | float] = [limit, self._ttl, self._grace, self._job_key("")]
        for key, (status, payload) in firsts.items():
            keys += [self._idem_key(tenant, key), self._job_key(status.job_id), self._payload_key(status.job_id)]
            args += [status.job_id, _encode(status), json.dumps(payload.meta).encode() + b"\n" + payload.content]
        ok, waiting, new, stale, found = self._admit(keys=keys, args=args)
        taken_over = [_bytes(job_id).decode() for job_id in stale]
        if not ok:
            return Admission([], int(waiting), int(new), taken_over)
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

    def enqueued(self, job_ids: Sequence[str]) -> None:
        """The producer confirms these jobs are on the queue: nobody needs to take them over."""
        if job_ids:
            self._redis.zrem(self._enqueuing, *job_ids)

    def free(self, job_id: str) -> None:
        """The job no longer waits to start (it started, was withdrawn or is gone): its slot goes back."""
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

    def record_duration(self, seconds: float) -> None:
        """Exponentially weighted mean job time, for telling busy callers when to come back."""
        key = f"{self._prefix}:ingest:mean_job_s"
        previous = self._redis.get(key)
        mean = seconds if previous is None else 0.8 * float(previous) + 0.2 * seconds
        self._redis.set(key, f"{mean:.4f}")

    def mean_duration(self) -> float:
        value = self._redis.get(f"{self._prefix}:ingest:mean_job_s")
        return float(value) if value else 1.0

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
