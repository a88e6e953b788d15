"""Ingest jobs in Redis: state, progress, idempotency keys, the submitted bytes, and admission.

A job is found again by its idempotency key (the caller's, or tenant + content
hash), so submitting the same thing twice returns the same job. Every lookup is
scoped to the caller's tenant: another tenant's job id is simply not found.

Admission bounds the jobs accepted and not yet started, exactly and across processes:
one script claims a submission's keys and admits its new jobs, all or none, against
the global limit and the tenant's own (rag/_admission_lua.py). A job leaves the admitted
sets when a worker starts it. Between admission and the producer's confirmed enqueue (into
the tenant's backlog of the fair queue, workers/fair_queue.py) it is also in the enqueuing
set, so the job of a producer that died in between is found and enqueued by the next
submission.

A refused submission is told when to come back from its place in a line of refused ones
and the pace at which workers start jobs, measured as they start them: about when its
turn comes, so a crowd of refused clients comes back spread out at the pace slots free up
rather than all together. A tenant at its own limit waits in its own line, at the pace its
own jobs start.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

import redis
import redis.lock

from core.errors import ConflictError, NotFoundError, OrchestrionError
from rag._admission_lua import ADMIT, JOB_TIME, STARTED

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
# A write of a document holds its lock this long past its holder's last renewal (every third of it, while it
# writes): a worker that died holding it frees it within this. Another write of the document waits for it at
# most half the task's soft time limit (services pass it), so the wait never eats the write's own time; a
# delete, answered to a client, waits less.
DOCUMENT_LOCK_S = 60.0
DOCUMENT_LOCK_WAIT_S = 420.0
DELETE_LOCK_WAIT_S = 30.0
# Weight of the newest gap between job starts in the moving average of the pace (after a plain mean of the
# first few): a few seconds of starts at the bench's pace.
_DRAIN_SMOOTHING = 0.2
# Weight of the newest run time in the moving average of a job's run time (after a plain mean of the first few).
_JOB_TIME_SMOOTHING = 0.2
# A submission's documents are written to Redis before its admission, each under a key that lives this long
# (admission renames the admitted ones; the rest are deleted after it), a few megabytes per round trip.
STAGED_TTL_S = 600
_STAGE_BATCH_BYTES = 4 * 1024 * 1024
# A tenant limit at or above this is no limit: the tenant level of admission never refuses.
NO_LIMIT = 2**52


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
    started_at: float = 0.0  # when a worker (last) started it; 0 while it waits
    lost_runs: int = 0  # runs that never ended: their worker process died (killed, out of memory) mid-run

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
        data.pop("lost_runs")
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
    by_tenant_limit: bool = False  # refused (or too large) by the tenant's own limit, not the global one
    key_reused_at: int | None = None  # refused: this document's idempotency key holds a job of other content

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
        document_lock_s: float = DOCUMENT_LOCK_S,
        document_lock_wait_s: float = DOCUMENT_LOCK_WAIT_S,
    ) -> None:
        self._redis = client
        self._lock_s, self._lock_wait_s = document_lock_s, document_lock_wait_s
        self._prefix = prefix
        self._ttl = ttl_s
        self._grace = enqueue_grace_s
        self._line_grace = line_grace_s
        self._admit = client.register_script(ADMIT)
        self._started = client.register_script(STARTED)
        self._job_time = client.register_script(JOB_TIME)
        self._admitted = f"{prefix}:ingest:admitted"
        self._enqueuing = f"{prefix}:ingest:enqueuing"
        self._drain = f"{prefix}:ingest:drain"
        self._mean_job = f"{prefix}:ingest:job_time"

    def _level(self, tenant: str | None) -> list[str]:
        """A level of admission's keys (rag/_admission_lua.py): a tenant's own, or the global one."""
        base = f"{self._prefix}:ingest" + (f":tenant:{tenant}" if tenant is not None else "")
        return [f"{base}:admitted", f"{base}:line", f"{base}:line:due", f"{base}:line:seq", f"{base}:drain"]

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _payload_key(self, job_id: str) -> str:
        return f"{self._prefix}:jobdata:{job_id}"

    def _staged_key(self, job_id: str) -> str:
        return f"{self._prefix}:jobstaged:{job_id}"

    def _idem_key(self, tenant: str, key: str) -> str:
        return f"{self._prefix}:idem:{tenant}:{key}"

    def admit(
        self,
        tenant: str,
        docs: Sequence[tuple[str, str, JobPayload]],
        limit: int,
        replaced: Sequence[bool] = (),
        tenant_limit: int = NO_LIMIT,
    ) -> Admission:
        """Each (doc id, idempotency key, payload) gets the job its key holds, or a new one. The new ones are
        admitted together only if the jobs accepted and not yet started stay within `limit`, and this
        tenant's within `tenant_limit`, and, for a submission not yet in the line of refused ones (the
        tenant's, then the global one), only if the whole line fits too; else nothing is written but the
        submission's place in the line and when it is told to come back. A submission of nothing new is
        answered however busy. A failed or expired job does not hold its key: retrying works.
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
        keys = [self._enqueuing, self._mean_job, *self._level(tenant), *self._level(None)]
        tenant_limit = tenant_limit if tenant_limit < limit else NO_LIMIT
        args: list[bytes | str | float] = [2, tenant_limit, limit, self._ttl, self._grace, self._job_key("")]
        args += [self._line_grace, HORIZON_MIN_S, HORIZON_MAX_S, RETRY_AFTER_MAX_S, random.random()]
        args.append("".join("1" if renew[key] else "0" for key in firsts))
        staged = {self._staged_key(status.job_id): payload for status, payload in firsts.values()}
        for key, (status, _) in firsts.items():
            job_id = status.job_id
            keys += [
                self._idem_key(tenant, key),
                self._job_key(job_id),
                self._payload_key(job_id),
                self._staged_key(job_id),
            ]
            args += [job_id, _encode(status)]
        try:
            self._stage(staged)
            ok, waiting, new, stale, found, retry_after, ahead, level = self._admit(keys=keys, args=args)
        except redis.ResponseError as exc:
            if "staged payload missing" not in str(exc):
                raise
            raise OrchestrionError("the documents expired in Redis before they were admitted: retry") from None
        finally:
            if staged:  # the admitted ones were renamed: what is left was not admitted
                self._redis.delete(*staged)
        taken_over = [_bytes(job_id).decode() for job_id in stale]
        if ok == -1:
            reused = list(firsts)[int(new) - 1]
            return Admission([], 0, 0, taken_over, key_reused_at=next(i for i, d in enumerate(docs) if d[1] == reused))
        if not ok:
            return Admission([], int(waiting), int(new), taken_over, int(retry_after), int(ahead), int(level) == 1)
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

    def _stage(self, payloads: dict[str, JobPayload]) -> None:
        """Write each document's bytes under a short-lived key, a few megabytes per round trip, for admission to
        rename: Redis serves others between them instead of taking one request's documents in one call."""
        with self._redis.pipeline(transaction=False) as pipe:
            held = 0
            for key, payload in payloads.items():
                data = json.dumps(payload.meta).encode() + b"\n" + payload.content
                pipe.set(key, data, ex=STAGED_TTL_S)
                held += len(data)
                if held >= _STAGE_BATCH_BYTES:
                    pipe.execute()
                    held = 0
            pipe.execute()

    def held_by(self, tenant: str, keys: Sequence[str]) -> dict[str, JobStatus]:
        """The job each of these idempotency keys holds now, for those that hold one."""
        holders = self._redis.mget([self._idem_key(tenant, key) for key in keys])
        held = {key: _bytes(job_id).decode() for key, job_id in zip(keys, holders, strict=True) if job_id}
        records = self._redis.mget([self._job_key(job_id) for job_id in held.values()]) if held else []
        return {key: _decode(_bytes(raw)) for key, raw in zip(held, records, strict=True) if raw}

    @contextmanager
    def writing_document(self, tenant: str, doc_id: str, wait_s: float | None = None) -> Iterator[None]:
        """Held while a job writes a document, or a delete removes it: two versions written at once would each
        keep their chunks, and a delete beside a write would leave half of either. The later one waits (at most
        `wait_s`, default the store's), then makes the document exactly its own version, or gone. The lock is
        renewed while held, so a long write never outlives it."""
        wait = self._lock_wait_s if wait_s is None else wait_s
        lock = redis.lock.Lock(
            self._redis,
            f"{self._prefix}:doclock:{tenant}:{doc_id}",
            timeout=self._lock_s,
            blocking_timeout=wait,
            thread_local=False,  # renewed from another thread
        )
        if not lock.acquire():
            raise ConflictError(f"document {doc_id!r} was being written for over {wait:.0f}s: retry later")
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(lock, done, doc_id), name="doclock", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            done.set()
            renewer.join()
            try:
                lock.release()
            except redis.exceptions.LockError:  # lost while held (renewals failed): another may have begun
                log.warning("the write of document %r of %s outlasted its lock", doc_id, tenant)

    def _renew(self, lock: redis.lock.Lock, done: threading.Event, doc_id: str) -> None:
        while not done.wait(self._lock_s / 3):
            try:
                lock.reacquire()
            except redis.exceptions.LockError:
                log.warning("lost the lock of document %r while writing it", doc_id)
                return
            except redis.RedisError:
                log.warning("could not renew the lock of document %r", doc_id, exc_info=True)

    def mark_deleted(self, tenant: str, doc_id: str) -> None:
        """A deleted document stays deleted for jobs submitted before the delete (rag/ingest.py)."""
        self._redis.set(self._deleted_key(tenant, doc_id), repr(time.time()), ex=self._ttl)

    def deleted_at(self, tenant: str, doc_id: str) -> float:
        """When the document was last deleted (within the job TTL), 0 if not."""
        return float(self._redis.get(self._deleted_key(tenant, doc_id)) or 0)

    def _deleted_key(self, tenant: str, doc_id: str) -> str:
        return f"{self._prefix}:deleted:{tenant}:{doc_id}"

    def forget_tenant(self, tenant: str) -> int:
        """Drop a removed tenant's idempotency keys and its level of admission: a tenant added again under its
        name starts afresh. (Tenant names hold no glob characters.) Its job records expire with their TTL."""
        keys = list(self._redis.scan_iter(match=self._idem_key(tenant, "*"), count=1000))
        keys += [key for key in self._level(tenant) if self._redis.exists(key)]
        for start in range(0, len(keys), 500):
            self._redis.delete(*keys[start : start + 500])
        return len(keys)

    def enqueued(self, job_ids: Sequence[str]) -> None:
        """The producer confirms these jobs are on the queue: nobody needs to take them over."""
        if job_ids:
            self._redis.zrem(self._enqueuing, *job_ids)

    def started(self, tenant: str, job_id: str) -> bool:
        """A worker starts the job: its slots (the tenant's and the global one) go back, and the pace of starts
        while jobs wait is measured at each level, for telling refused callers when their turn comes. False
        when the job had left already (a rerun)."""
        tenant_level, global_level = self._level(tenant), self._level(None)
        keys = [self._enqueuing, tenant_level[0], tenant_level[4], global_level[0], global_level[4]]
        return bool(self._started(keys=keys, args=[job_id, _DRAIN_SMOOTHING]))

    def free(self, job_id: str, tenant: str | None = None) -> None:
        """The job no longer waits to start (withdrawn, or gone): its slots go back. Without its tenant (its
        record expired), the tenant's slot goes back as the record's lifetime ends, as admission prunes."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self._admitted, job_id)
            if tenant is not None:
                pipe.zrem(self._level(tenant)[0], job_id)
            pipe.zrem(self._enqueuing, job_id)
            pipe.execute()

    def waiting(self, tenant: str | None = None) -> int:
        """Jobs accepted and not yet started (of `tenant`, or of all), the numbers `admit` holds to limits."""
        return int(self._redis.zcard(self._level(tenant)[0]))

    def withdraw(self, status: JobStatus, idempotency_key: str) -> JobStatus:
        """Undo the admission of a job that could not be enqueued: a retry makes a new job.

        In this order so that a producer dying half-way leaves a job the next submission settles:
        still QUEUED, it is enqueued after the grace; FAILED, its slot is freed."""
        idem = self._idem_key(status.tenant, idempotency_key)
        if self._redis.get(idem) == status.job_id.encode():
            self._redis.delete(idem)
        self.update(status, state=JobState.FAILED, error="could not be queued")
        self.free(status.job_id, status.tenant)
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
        """Record the job's new state. A final one drops the submitted bytes with it: nothing reads them again
        (a retry of a failed job is a new job), and a failed job's would otherwise hold memory for the job TTL."""
        for name, value in changes.items():
            setattr(status, name, value)
        status.updated_at = time.time()
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._job_key(status.job_id), _encode(status), ex=self._ttl)
            if status.state in FINAL_STATES:
                pipe.delete(self._payload_key(status.job_id))
            pipe.execute()
        return status

    def payload(self, job_id: str) -> JobPayload:
        raw = self._redis.get(self._payload_key(job_id))
        if raw is None:
            raise NotFoundError(f"the document of job {job_id!r} is gone (expired after {self._ttl}s)")
        meta, _, content = _bytes(raw).partition(b"\n")
        return JobPayload(content=content, meta=json.loads(meta))

    def sweep(self, interval_s: float, steps: int = 10) -> int:
        """Drop the submitted bytes of jobs that ended or expired without dropping them (a process that died
        between the two, or records written before final states dropped them). At most once per `interval_s`
        across processes, `steps` SCAN pages at a time from where the last sweep stopped, so no caller pays
        for a whole keyspace. Returns how many payloads it dropped."""
        if not self._redis.set(f"{self._prefix}:ingest:sweep", b"1", nx=True, ex=max(1, int(interval_s))):
            return 0
        cursor_key = f"{self._prefix}:ingest:sweep:cursor"
        cursor, dropped = int(self._redis.get(cursor_key) or 0), 0
        pattern = self._payload_key("*")
        for _ in range(steps):
            cursor, keys = self._redis.scan(cursor, match=pattern, count=1000)
            if keys:
                job_ids = [_bytes(key).decode().rpartition(":")[2] for key in keys]
                records = self._redis.mget([self._job_key(job_id) for job_id in job_ids])
                orphans = [key for key, raw in zip(keys, records, strict=True) if raw is None or _ended(raw)]
                dropped += self._redis.delete(*orphans) if orphans else 0
            if cursor == 0:
                break
        self._redis.set(cursor_key, cursor)
        return dropped

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


def _ended(raw: bytes | str) -> bool:
    return JobState(json.loads(raw)["state"]) in FINAL_STATES


def _encode(status: JobStatus) -> bytes:
    return json.dumps({**asdict(status), "state": status.state.value}).encode()


def _decode(raw: bytes) -> JobStatus:
    data = json.loads(raw)
    data["state"] = JobState(data["state"])
    return JobStatus(**data)


def _bytes(value: bytes | str) -> bytes:
    """redis-py types replies as bytes or str; this client never decodes, so they are bytes."""
    return value.encode() if isinstance(value, str) else value
