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
from collections.abc import AsyncGenerator, Awaitable, Callable
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


def _failed(future: asyncio.Future[Any]) -> bool:
    return future.cancelled() or future.exception() is not None


def _until_end(events: list[RunEvent]) -> list[RunEvent]:
    for i, event in enumerate(events):
        if event.event == END:
            return events[: i + 1]
    return events


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
        self._shared: dict[str, tuple[float, asyncio.Future[Any]]] = {}

    @property
    def followed(self) -> int:
        return sum(len(f) for f in self._followers.values())

    async def follow(
        self, run_id: str, after: str = START, idle_s: float = 5.0
    ) -> AsyncGenerator[list[RunEvent] | None, None]:
        """The run's entries after `after`, in order, until (and including) its `end`, in batches: whatever
        arrived since the follower last looked, so a client that falls behind catches up in one write per batch
        rather than one per entry. Yields None after `idle_s` without an entry, so the caller can send a
        heartbeat or look at the run."""
        follower = _Follower(after)
        cursor = after
        while True:  # what is there already, a page at a time
            page = await self.events.after(run_id, cursor, count=PAGE)
            batch = _until_end(page)
            if batch:
                cursor = follower.cursor = batch[-1].id
                yield batch
                if batch[-1].event == END:
                    return
            if len(page) < PAGE:
                break
        self._join(run_id, follower)
        try:
            while True:
                woke = True
                try:
                    async with asyncio.timeout(idle_s):  # not wait_for: that makes a task per wait per follower
                        await follower.wake.wait()
                except TimeoutError:
                    woke = False
                follower.wake.clear()
                fresh = await self._take(run_id, follower, cursor)
                if not woke and not fresh:  # quiet (the reader reads for every follower: no read here)
                    yield None
                    continue
                batch = _until_end(fresh)
                if batch:
                    cursor = follower.cursor = batch[-1].id
                    yield batch
                    if batch[-1].event == END:
                        return
        finally:
            self._leave(run_id, follower)

    async def shared(self, key: str, fetch: Callable[[], Awaitable[T]], max_age_s: float = 1.0) -> T:
        """`fetch()`'s answer, shared by every follower asking within `max_age_s` (a run's status, checked on
        heartbeats: one read per run, not one per client). Callers that ask while a fetch is under way wait for
        that one: thousands of followers of one run waking together must not each take a Redis connection."""
        now = time.monotonic()
        known = self._shared.get(key)
        if known is None or (known[1].done() and (now - known[0] >= max_age_s or _failed(known[1]))):
            known = (now, asyncio.ensure_future(fetch()))
            self._shared[key] = known
            if len(self._shared) > 10_000:
                for stale in [k for k, (at, f) in self._shared.items() if f.done() and now - at >= max_age_s]:
                    del self._shared[stale]
        # shielded: a follower that leaves mid-fetch must not cancel the fetch the others wait for
        return await asyncio.shield(known[1])

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
        """The process's reader: runs for the app's lifetime. One blocking XREAD covers every followed run; a
        run first followed while it blocks gets one extra read of its own (never more than one at a time), so
        its first live entry does not wait out the block. A run read twice is harmless: followers take only
        what continues their cursor."""
        main: asyncio.Task[dict[str, list[RunEvent]]] | None = None
        extra: asyncio.Task[dict[str, list[RunEvent]]] | None = None
        reads: dict[asyncio.Task[dict[str, list[RunEvent]]], dict[str, str]] = {}
        changed = asyncio.create_task(self._changed.wait())
        try:
            while True:
                if main is None and self._cursors:
                    main = self._read_task(dict(self._cursors), reads)
                elif extra is None and main is not None:
                    new = {run: at for run, at in self._cursors.items() if run not in reads[main]}
                    if new:
                        extra = self._read_task(new, reads)
                self._changed.clear()
                if changed.done():
                    changed = asyncio.create_task(self._changed.wait())
                done, _ = await asyncio.wait([changed, *reads], return_when=asyncio.FIRST_COMPLETED)
                delivered = False
                for task in [t for t in reads if t in done]:
                    cursors = reads.pop(task)
                    main, extra = (None if task is main else main), (None if task is extra else extra)
                    try:
                        found = task.result()
                    except Exception:
                        log.warning("reading run event streams failed; retrying", exc_info=True)
                        await asyncio.sleep(0.5)
                        continue
                    delivered = self._deliver(cursors, found) or delivered
                if delivered:
                    await asyncio.sleep(0)
        finally:
            for pending in (changed, *reads):
                pending.cancel()

    def _read_task(
        self, cursors: dict[str, str], reads: dict[asyncio.Task[dict[str, list[RunEvent]]], dict[str, str]]
    ) -> asyncio.Task[dict[str, list[RunEvent]]]:
        task = asyncio.create_task(self.events.wait(cursors, self.block_ms))
        reads[task] = cursors
        return task

    def _deliver(self, cursors: dict[str, str], found: dict[str, list[RunEvent]]) -> bool:
        delivered = False
        for run_id, entries in found.items():
            if not entries:
                continue
            delivered = True
            read_after = cursors[run_id]
            known = self._cursors.get(run_id)
            if known is not None and entry_key(entries[-1].id) > entry_key(known):
                self._cursors[run_id] = entries[-1].id
            for follower in self._followers.get(run_id, ()):
                follower.batches.append((read_after, entries))
                follower.wake.set()
        return delivered

    async def close(self) -> None:
        for followers in self._followers.values():
            for follower in followers:
                follower.wake.set()
        with contextlib.suppress(Exception):
            self._followers.clear()
