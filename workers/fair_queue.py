"""Fair dispatch into a Celery queue: per-tenant backlogs in Redis, taken in turn, a few tasks waiting in Celery.

A Celery queue is first come, first served: behind a tenant's bulk ingest of 300 documents, another tenant's
one note waits for all 300. Here a job (tenant + job id) first waits in its tenant's backlog (a Redis list),
and dispatch keeps at most `ahead` tasks waiting in the Celery queue itself (its broker list, plus tasks
being sent). Whenever a worker starts one of the queue's tasks, a producer adds jobs, or a worker's sweep
comes by, the next jobs are taken from the backlogs in start-time fair order: each tenant's next job is
tagged max(virtual time, the tag after its last dispatched job), the smallest tag goes first, and the
virtual time is the tag last dispatched. A tenant that joins gets the current virtual time, so its first
job goes next; tenants with backlogs take turns, one job each. A note behind a bulk ingest so waits for
about `ahead` tasks and the ones running, not the whole batch.

At least once: one script moves a job from its backlog into a `sending` set; it leaves that set once Celery
has the message. A dispatcher that died in between leaves it there, and a dispatch after SENDING_GRACE_S
sends it again (a task may so run twice: tasks are idempotent). Once in Celery, Celery's own guarantees hold
(acks late, redelivery after the visibility timeout). The count waiting in Celery is read from the broker
list itself, so a purged queue or a message lost with a dead worker never holds a place.

Any queue of per-tenant work can use it: `FairQueue(app, queue, task, ahead)`, `push(tenant, job_ids)` by the
producer; the worker side (workers/fair_dispatch.py) dispatches as tasks start.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import redis
from celery import Celery

log = logging.getLogger(__name__)
# How long a dispatched job may take to reach the broker before another dispatch sends it again. A send takes
# milliseconds (and kombu retries a failed publish for under a second); a dispatcher paused longer than this
# costs a duplicate task, not a lost one.
SENDING_GRACE_S = 15.0
# Most jobs one script call takes when nothing bounds them (ahead 0): a bound on one call's time in Redis.
_BATCH = 500

# KEYS: backlog, ring, last, clock, size. ARGV: tenant, job ids...
# The ring holds the tenants with a backlog, scored by their next job's tag; `last` keeps the tag after each
# tenant's last dispatched job for when its backlog fills again; `size` counts jobs in every backlog (a hash: kombu's
# prefixing client, which reads it for the queue-depth metric, prefixes HGET but not GET).
_PUSH = """
local backlog, ring, last, clock, size = unpack(KEYS, 1, 5)
local tenant = ARGV[1]
redis.call('RPUSH', backlog, unpack(ARGV, 2))
redis.call('HINCRBY', size, 'jobs', #ARGV - 1)
if not redis.call('ZSCORE', ring, tenant) then
  local now = tonumber(redis.call('GET', clock) or '0')
  local after = tonumber(redis.call('HGET', last, tenant) or '0')
  redis.call('ZADD', ring, math.max(now, after), tenant)
end
return redis.call('LLEN', backlog)
"""

# KEYS: ring, last, clock, size, sending, the Celery queue's broker list. ARGV: backlog key prefix, ahead
# (0: no bound), sending grace s, batch.
# Returns the job ids to send now: ones a dead dispatcher left unsent, then the next ones in fair order.
_DISPATCH = """
local ring, last, clock, size, sending, broker = unpack(KEYS, 1, 6)
local backlog_prefix, ahead, grace, batch = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1e6
local out = redis.call('ZRANGEBYSCORE', sending, '-inf', now - grace, 'LIMIT', 0, batch)
for _, id in ipairs(out) do redis.call('ZADD', sending, now, id) end
local room = batch - #out
if ahead > 0 then
  room = math.min(room, ahead - redis.call('LLEN', broker) - redis.call('ZCARD', sending))
end
while room > 0 do
  local head = redis.call('ZRANGE', ring, 0, 0, 'WITHSCORES')
  if #head == 0 then break end
  local tenant, tag = head[1], tonumber(head[2])
  local backlog = backlog_prefix .. tenant
  local id = redis.call('LPOP', backlog)
  redis.call('SET', clock, tag)
  if redis.call('LLEN', backlog) > 0 then
    redis.call('ZADD', ring, tag + 1, tenant)
  else
    redis.call('ZREM', ring, tenant)
    redis.call('HSET', last, tenant, tag + 1)
  end
  if id then
    redis.call('HINCRBY', size, 'jobs', -1)
    redis.call('ZADD', sending, now, id)
    out[#out + 1] = id
    room = room - 1
  end
end
return out
"""


def broker_key(app: Celery, queue: str) -> str:
    """The broker list of `queue` (kombu's Redis transport: the global key prefix, then the queue's name)."""
    options = app.conf.broker_transport_options or {}
    return f"{options.get('global_keyprefix', '')}{queue}"


def fair_keys_prefix(app: Celery, queue: str) -> str:
    """Where a queue's backlogs live: beside the broker's keys, so deployments sharing a Redis stay apart."""
    return broker_key(app, f"fair:{queue}")


def size_key(queue: str) -> str:
    """The hash (field `jobs`) counting the jobs in every tenant's backlog of `queue`, below the broker's key
    prefix: kombu's channel client adds the prefix itself, a plain client puts it in front."""
    return f"fair:{queue}:size"


def backlog_size(client: Any, queue: str) -> int:
    """Jobs in every tenant's backlog of `queue`, read with kombu's channel client (it adds the key prefix)."""
    return int(client.hget(size_key(queue), "jobs") or 0)


class FairQueue:
    """One Celery queue's per-tenant backlogs and their dispatch. Built from the Celery app: the backlogs live
    in the broker's Redis, under its key prefix."""

    def __init__(
        self,
        app: Celery,
        queue: str,
        task: str,
        ahead: int,
        client: redis.Redis | None = None,
        send_options: dict[str, Any] | None = None,
        sending_grace_s: float = SENDING_GRACE_S,
        job_id_is_task_id: bool = False,
    ) -> None:
        """`send_options` go with every task sent (ignore_result by default); `job_id_is_task_id` makes each
        task's Celery id its job id (a tool call's id, so one call never makes a second task)."""
        self.app = app
        self.sending_grace_s = sending_grace_s
        self._job_id_is_task_id = job_id_is_task_id
        self.queue = queue
        self.task = task
        self.ahead = ahead
        self.redis = client if client is not None else redis.Redis.from_url(str(app.conf.broker_url))
        # The job store carries a job's state, so nobody reads a task's result (workers/client.py says why).
        self._send_options = {"ignore_result": True, **(send_options or {})}
        base = fair_keys_prefix(app, queue)
        self._backlog_prefix = f"{base}:backlog:"
        self._ring, self._last, self._clock = f"{base}:ring", f"{base}:last", f"{base}:clock"
        self._size, self._sending = broker_key(app, size_key(queue)), f"{base}:sending"
        self._broker = broker_key(app, queue)
        self._push = self.redis.register_script(_PUSH)
        self._dispatch = self.redis.register_script(_DISPATCH)

    def push(self, tenant: str, job_ids: Sequence[str]) -> None:
        """Add jobs to the tenant's backlog, in order, all or none (one script per 1,000). Raises when Redis
        does not answer: then none of them is queued (or, past 1,000, the later ones)."""
        for start in range(0, len(job_ids), 1000):
            part = list(job_ids[start : start + 1000])
            keys = [self._backlog_prefix + tenant, self._ring, self._last, self._clock, self._size]
            self._push(keys=keys, args=[tenant, *part])

    def dispatch(self) -> int:
        """Send the next jobs into Celery, as many as the bound allows (all of them with no bound); returns how
        many were sent. Raises when Redis or the broker fails: what was taken and not sent is sent again by a
        dispatch after the sending grace."""
        sent = 0
        while True:
            keys = [self._ring, self._last, self._clock, self._size, self._sending, self._broker]
            ids = [_text(i) for i in self._dispatch(keys=keys, args=[self._backlog_prefix, self.ahead,
                                                                     self.sending_grace_s, _BATCH])]  # fmt: skip
            done: list[str] = []
            try:
                for job_id in ids:
                    task_id = job_id if self._job_id_is_task_id else None
                    self.app.send_task(
                        self.task, args=[job_id], queue=self.queue, task_id=task_id, **self._send_options
                    )
                    done.append(job_id)
            finally:
                if done:
                    self.redis.zrem(self._sending, *done)
            sent += len(done)
            if len(ids) < _BATCH:
                return sent

    def dispatch_quietly(self) -> int:
        """`dispatch` for those who must not fail for it (a submission whose jobs are safe in their backlog, a
        task starting): a failure is logged, and the next dispatch (at the latest a worker's sweep) goes on."""
        try:
            return self.dispatch()
        except Exception:
            log.warning("could not dispatch %s jobs now; the next dispatch will", self.queue, exc_info=True)
            return 0

    def backlog(self, tenant: str) -> list[str]:
        """The tenant's jobs not yet dispatched, in order."""
        return [_text(i) for i in self.redis.lrange(self._backlog_prefix + tenant, 0, -1)]

    def waiting(self) -> int:
        """Jobs in every backlog, not yet dispatched."""
        return int(self.redis.hget(self._size, "jobs") or 0)

    def close(self) -> None:
        self.redis.close()


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
