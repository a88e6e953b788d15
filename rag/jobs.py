"""Ingest jobs in Redis: state, progress, idempotency keys and the submitted bytes.

A job is found again by its idempotency key (the caller's, or tenant + content
hash), so submitting the same thing twice returns the same job. Every lookup is
scoped to the caller's tenant: another tenant's job id is simply not found.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis

from core.errors import NotFoundError


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


class JobStore:
    def __init__(self, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_s

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _payload_key(self, job_id: str) -> str:
        return f"{self._prefix}:jobdata:{job_id}"

    def _idem_key(self, tenant: str, key: str) -> str:
        return f"{self._prefix}:idem:{tenant}:{key}"

    def create(self, tenant: str, doc_id: str, idempotency_key: str, payload: JobPayload) -> tuple[JobStatus, bool]:
        """The job for this key: a new one (True), or the one an earlier submission made (False).

        The job and its bytes are written before the key is claimed, so whoever finds
        the key finds a complete job. A failed job does not hold its key: retrying works.
        """
        now = time.time()
        status = JobStatus(uuid.uuid4().hex, tenant, doc_id, JobState.QUEUED, now, now)
        with self._redis.pipeline() as pipe:
            pipe.set(self._job_key(status.job_id), _encode(status), ex=self._ttl)
            pipe.set(self._payload_key(status.job_id), json.dumps(payload.meta).encode() + b"\n" + payload.content,
                     ex=self._ttl)  # fmt: skip
            pipe.execute()
        idem = self._idem_key(tenant, idempotency_key)
        for _ in range(3):
            if self._redis.set(idem, status.job_id, nx=True, ex=self._ttl):
                return status, True
            existing_id = self._redis.get(idem)
            existing = self._load(_bytes(existing_id).decode()) if existing_id else None
            if existing is not None and existing.state != JobState.FAILED:
                self._forget(status.job_id)
                return existing, False
            self._redis.delete(idem)  # expired or failed: take the key over
        raise RuntimeError(f"could not claim idempotency key {idempotency_key!r}")

    def release_key(self, tenant: str, idempotency_key: str, job_id: str) -> None:
        """Undo a claim whose job could not be enqueued, so a retry makes a new job."""
        idem = self._idem_key(tenant, idempotency_key)
        if self._redis.get(idem) == job_id.encode():
            self._redis.delete(idem)

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

    def _forget(self, job_id: str) -> None:
        self._redis.delete(self._job_key(job_id), self._payload_key(job_id))


def _encode(status: JobStatus) -> bytes:
    return json.dumps({**asdict(status), "state": status.state.value}).encode()


def _decode(raw: bytes) -> JobStatus:
    data = json.loads(raw)
    data["state"] = JobState(data["state"])
    return JobStatus(**data)


def _bytes(value: bytes | str) -> bytes:
    """redis-py types replies as bytes or str; this client never decodes, so they are bytes."""
    return value.encode() if isinstance(value, str) else value
