"""One reader of run event streams per API process, however many clients follow them.

Every SSE client of a run follows the run's Redis Stream (graphs/events.py) from an entry id: first what is
already there (XRANGE), then what comes. The live part would cost one blocked Redis connection per client;
instead one task per process blocks on XREAD over every followed run at once and tells each follower what it
read. A follower uses those entries only when they continue exactly where it stands (the reader read from
an id at or before the follower's); otherwise it reads the gap itself. So a client sees every entry once, in
order, whether it joined at the start, mid-run or on a reconnect with `Last-Event-ID`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from graphs.events import END, RunEvent, RunEvents

log = logging.getLogger(__name__)
T = TypeVar("T")
START = "0-0"
PAGE = 500


def entry_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(eq=False)  # one per client, by identity
class _Follower:
    cursor: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    # (the id the reader read after, entries): a batch the follower may take if it continues its cursor
    batches: list[tuple[str, list[RunEvent]]] = field(default_factory=list)


class StreamHub:
    def __init__(self, events: RunEvents, block_ms: int) -> None:
        self.events = events
        self.block_ms = block_ms
        self._followers: dict[str, set[_Follower]] = {}
        self._cursors: dict[str, str] = {}  # run id -> the reader's position in its stream
        self._changed = asyncio.Event()
        self._shared: dict[str, tuple[float, Any]] = {}

    @property
    def followed(self) -> int:
        return sum(len(f) for f in self._followers.values())

    async def follow(self, run_id: str, after: str = START, idle_s: float = 5.0) -> AsyncIterator[RunEvent | None]:
        """The run's entries after `after`, in order, until (and including) its `end`. Yields None after
        `idle_s` without an entry, so the caller can send a heartbeat or look at the run."""
        follower = _Follower(after)
        cursor = after
        while True:  # what is there already, a page at a time
            page = await self.events.after(run_id, cursor, count=PAGE)
            for event in page:
                cursor = follower.cursor = event.id
                yield event
                if event.event == END:
                    return
            if len(page) < PAGE:
                break
        self._join(run_id, follower)
        try:
            while True:
                woke = True
                try:
                    await asyncio.wait_for(follower.wake.wait(), idle_s)
                except TimeoutError:
                    woke = False
                follower.wake.clear()
                fresh = await self._take(run_id, follower, cursor)
                if not woke and not fresh:  # quiet (the reader reads for every follower: no read here)
                    yield None
                    continue
                for event in fresh:
                    cursor = follower.cursor = event.id
                    yield event
                    if event.event == END:
                        return
        finally:
            self._leave(run_id, follower)

    async def shared(self, key: str, fetch: Callable[[], Awaitable[T]], max_age_s: float = 1.0) -> T:
        """`fetch()`'s answer, shared by every follower asking within `max_age_s` (a run's status, checked on
        heartbeats: one read per run, not one per client)."""
        now = time.monotonic()
        known = self._shared.get(key)
        if known is not None and now - known[0] < max_age_s:
            return known[1]  # type: ignore[no-any-return]
        value = await fetch()
        self._shared[key] = (now, value)
        if len(self._shared) > 10_000:
            for stale in [k for k, (at, _) in self._shared.items() if now - at >= max_age_s]:
                del self._shared[stale]
        return value

    async def _take(self, run_id: str, follower: _Follower, cursor: str) -> list[RunEvent]:
        """The entries after `cursor` from the reader's batches, or read here where the batches leave a gap."""
        batches, follower.batches = follower.batches, []
        fresh: list[RunEvent] = []
        for read_after, entries in batches:
            position = fresh[-1].id if fresh else cursor
            if entry_key(read_after) > entry_key(position):  # the reader skipped entries we lack
                fresh.extend(await self._read(run_id, position))
                break
            fresh.extend(e for e in entries if entry_key(e.id) > entry_key(position))
        return fresh

    async def _read(self, run_id: str, cursor: str) -> list[RunEvent]:
        out: list[RunEvent] = []
        while True:
            page = await self.events.after(run_id, cursor, count=PAGE)
            out.extend(page)
            if len(page) < PAGE:
                return out
            cursor = page[-1].id

    def _join(self, run_id: str, follower: _Follower) -> None:
        followers = self._followers.setdefault(run_id, set())
        followers.add(follower)
        known = self._cursors.get(run_id)
        if known is None or entry_key(follower.cursor) < entry_key(known):
            self._cursors[run_id] = follower.cursor
        self._changed.set()

    def _leave(self, run_id: str, follower: _Follower) -> None:
        followers = self._followers.get(run_id)
        if followers is None:
            return
        followers.discard(follower)
        if not followers:
            del self._followers[run_id]
            self._cursors.pop(run_id, None)

    async def serve(self) -> None:
        """The process's reader: runs for the app's lifetime."""
        while True:
            if not self._cursors:
                self._changed.clear()
                await self._changed.wait()
            self._changed.clear()
            cursors = dict(self._cursors)
            try:
                found = await self.events.wait(cursors, self.block_ms)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("reading run event streams failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            for run_id, entries in found.items():
                if not entries:
                    continue
                read_after = cursors[run_id]
                if run_id in self._cursors:
                    self._cursors[run_id] = entries[-1].id
                for follower in self._followers.get(run_id, ()):
                    follower.batches.append((read_after, entries))
                    follower.wake.set()
            if found:
                await asyncio.sleep(0)

    async def close(self) -> None:
        for followers in self._followers.values():
            for follower in followers:
                follower.wake.set()
        with contextlib.suppress(Exception):
            self._followers.clear()
