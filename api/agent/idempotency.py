"""`Idempotency-Key` on the POSTs that create work: a retried request gets the first one's answer, and its run.

The first request with a key claims it in Redis (SET NX, per tenant) with a fingerprint of its method, path
and body; it then records what it made (the run, or the whole JSON answer). A request that finds the key
claimed with another fingerprint is refused (422); with the same one it waits for the record and answers
from it: the same run, the same body. So 50 concurrent copies of one request execute once. A request that
failed before it made anything releases the key, so the client's retry is a first request again.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import anyio
import orjson

from core.errors import ConflictError, IdempotencyKeyReusedError, InvalidInputError
from routing.redis_loop import LoopRedis

PENDING = "pending"
MAX_KEY = 200
WAIT_FOR_FIRST_S = 30.0


@dataclass(frozen=True)
class Claim:
    key: str
    fingerprint: str
    first: bool  # this request executes; otherwise `record` is the first one's
    record: dict[str, Any]


class Idempotency:
    def __init__(self, redis: LoopRedis, prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self._p = f"{prefix}:agents:idem"
        self.ttl_s = ttl_s

    @staticmethod
    def fingerprint(method: str, path: str, body: bytes) -> str:
        try:
            canonical = orjson.dumps(orjson.loads(body or b"null"), option=orjson.OPT_SORT_KEYS)
        except orjson.JSONDecodeError:
            canonical = body
        return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()

    async def claim(self, tenant: str, key: str, fingerprint: str) -> Claim:
        if not key or len(key) > MAX_KEY:
            raise InvalidInputError(f"Idempotency-Key must have 1 to {MAX_KEY} characters")
        redis_key = f"{self._p}:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
        mine = orjson.dumps({"fp": fingerprint, "state": PENDING})
        if await self.redis.client().set(redis_key, mine, nx=True, ex=self.ttl_s):
            return Claim(redis_key, fingerprint, True, {})
        deadline = time.monotonic() + WAIT_FOR_FIRST_S
        delay = 0.01
        while True:
            raw = await self.redis.client().get(redis_key)
            if raw is None:  # the first request failed and let go: this one goes first now
                if await self.redis.client().set(redis_key, mine, nx=True, ex=self.ttl_s):
                    return Claim(redis_key, fingerprint, True, {})
                continue
            record: dict[str, Any] = orjson.loads(raw)
            if record["fp"] != fingerprint:
                raise IdempotencyKeyReusedError(
                    "this Idempotency-Key was used for another request (other path or body); use a new key"
                )
            if record["state"] != PENDING:
                return Claim(redis_key, fingerprint, False, record)
            if time.monotonic() > deadline:
                raise ConflictError("the first request with this Idempotency-Key is still being processed; retry")
            await anyio.sleep(delay)
            delay = min(0.2, delay * 2)

    async def record(self, claim: Claim, **made: Any) -> None:
        """What the first request made (a run id, or its status and body); later copies answer from it."""
        value = orjson.dumps({"fp": claim.fingerprint, "state": "done", **made})
        await self.redis.client().set(claim.key, value, ex=self.ttl_s)

    async def release(self, claim: Claim) -> None:
        if claim.first:
            await self.redis.client().delete(claim.key)
