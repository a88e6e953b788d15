"""A run's events, in a Redis Stream of its own: one ordered log that any API replica reads.

The process executing the run appends each stream part the graph emits (values, updates, messages, custom,
...) and, once the run's outcome is recorded, an `end` entry; the stream expires `ttl_s` after that. A reader
gets everything after an entry id (the SSE `id:`), so a client that reconnects with `Last-Event-ID` misses
nothing and sees nothing twice.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import orjson

from routing.redis_loop import LoopRedis

END = "end"
MAX_EVENTS = 100_000  # per run: a runaway stream is trimmed, never unbounded
LIVE_TTL_S = 24 * 3600  # beyond `ttl_s`, while the run goes on (renewed by every entry)


@dataclass(frozen=True)
class RunEvent:
    id: str
    event: str
    data: bytes  # JSON

    def sse(self) -> bytes:
        return b"id: " + self.id.encode() + b"\nevent: " + self.event.encode() + b"\ndata: " + self.data + b"\n\n"


def to_json(value: Any) -> bytes:
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # what orjson refuses and JSON allows (integers beyond 64 bits, in client metadata)
        return json.dumps(value, default=_default).encode()


def _default(value: Any) -> Any:
    """State and stream parts as LangGraph's own server shows them: messages as their dicts, interrupts as
    {value, id}, tuples as lists."""
    if hasattr(value, "model_dump"):
        return value.model_dump()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


class RunEvents:
    def __init__(self, redis: LoopRedis, prefix: str, ttl_s: int) -> None:
        self.redis = redis
        self._p = f"{prefix}:agents:events"
        self.ttl_s = ttl_s

    def key(self, run_id: str) -> str:
        return f"{self._p}:{run_id}"

    async def append(self, run_id: str, event: str, data: Any, rename: tuple[str, str] | None = None) -> str:
        """`rename`: (a string, what clients see instead) wherever it is a whole JSON string in `data`."""
        body = to_json(data)
        if rename is not None:
            body = body.replace(to_json(rename[0]), to_json(rename[1]))
        pipe = self.redis.client().pipeline(transaction=False)
        pipe.xadd(self.key(run_id), {"e": event, "d": body}, maxlen=MAX_EVENTS, approximate=True)
        pipe.expire(self.key(run_id), self.ttl_s + LIVE_TTL_S)  # a stream whose run never ends still goes
        entry, _ = await pipe.execute()
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def newest(self, run_id: str) -> RunEvent | None:
        raw: Any = await self.redis.client().xrevrange(self.key(run_id), count=1)
        return _event(*raw[0]) if raw else None

    async def last(self, run_id: str, event: str, scan: int = 2000) -> RunEvent | None:
        """The newest entry named `event` among the last `scan` entries, or None."""
        before, seen = "+", 0
        while seen < scan:
            raw: Any = await self.redis.client().xrevrange(self.key(run_id), max=before, count=200)
            if not raw:
                return None
            for entry_id, fields in raw:
                found = _event(entry_id, fields)
                if found.event == event:
                    return found
            seen += len(raw)
            before = "(" + _event(*raw[-1]).id
        return None

    async def end(self, run_id: str, status: str) -> None:
        """The last entry, written once the run's outcome is recorded; then the stream expires in `ttl_s`."""
        await self.append(run_id, END, {"run_id": run_id, "status": status})
        await self.redis.client().expire(self.key(run_id), self.ttl_s)

    async def after(self, run_id: str, entry_id: str = "0-0", count: int = 500) -> list[RunEvent]:
        """Entries after `entry_id`, oldest first, without waiting."""
        start = f"({entry_id}" if entry_id != "0-0" else "-"
        raw: Any = await self.redis.client().xrange(self.key(run_id), min=start, count=count)
        return [_event(entry_id_, fields) for entry_id_, fields in raw or []]

    async def wait(self, cursors: dict[str, str], block_ms: int, count: int = 500) -> dict[str, list[RunEvent]]:
        """New entries of several runs at once (run id -> after entry id), waiting up to `block_ms` for any."""
        if not cursors:
            return {}
        streams: Any = {self.key(run_id): entry for run_id, entry in cursors.items()}
        raw: Any = await self.redis.client().xread(streams, count=count, block=block_ms)
        out: dict[str, list[RunEvent]] = {}
        prefix = len(self._p) + 1
        pairs = raw.items() if isinstance(raw, dict) else raw or []  # RESP3 answers a map, RESP2 a list
        for key, entries in pairs:
            name = key.decode() if isinstance(key, bytes) else str(key)
            flat = (
                entries[0]
                if entries and isinstance(entries[0], list) and entries[0] and isinstance(entries[0][0], list)
                else entries
            )
            out[name[prefix:]] = [_event(i, f) for i, f in flat]
        return out

    async def exists(self, run_id: str) -> bool:
        return bool(await self.redis.client().exists(self.key(run_id)))


def _event(entry_id: Any, fields: dict[Any, Any]) -> RunEvent:
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in fields.items()}
    event = get["e"].decode() if isinstance(get["e"], bytes) else str(get["e"])
    data = get["d"] if isinstance(get["d"], bytes) else str(get["d"]).encode()
    return RunEvent(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id), event, data)


def sse_comment(text: str) -> bytes:
    return b": " + text.encode() + b"\n\n"


def sse_event(event: str, data: Any, entry_id: str | None = None) -> bytes:
    head = b"id: " + entry_id.encode() + b"\n" if entry_id else b""
    return head + b"event: " + event.encode() + b"\ndata: " + to_json(data) + b"\n\n"
