"""The API process's one reader of run event streams (api/agent/hub.py) on a real Valkey: order, batches,
joins mid-stream, and a newly followed run that does not wait out the reader's block."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from api.agent.hub import StreamHub
from graphs.events import END, RunEvent, RunEvents
from routing.redis_loop import LoopRedis

pytestmark = pytest.mark.anyio
BLOCK_MS = 8_000  # far longer than any delivery below may take


@pytest.fixture
async def hub(valkey: str, key_prefix: str) -> AsyncIterator[StreamHub]:
    redis = LoopRedis(valkey)
    hub = StreamHub(RunEvents(redis, key_prefix, ttl_s=60), BLOCK_MS)
    reader = asyncio.create_task(hub.serve())
    try:
        yield hub
    finally:
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await redis.aclose()


async def _collect(hub: StreamHub, run_id: str, after: str = "0-0") -> list[list[RunEvent]]:
    batches: list[list[RunEvent]] = []
    async for batch in hub.follow(run_id, after, idle_s=30):
        if batch is not None:
            batches.append(batch)
    return batches


async def test_followers_get_every_entry_once_in_order_whenever_they_join(hub: StreamHub) -> None:
    run_id = uuid.uuid4().hex
    early = [await hub.events.append(run_id, "values", {"i": i}) for i in range(3)]
    from_start = asyncio.create_task(_collect(hub, run_id))
    mid = asyncio.create_task(_collect(hub, run_id, after=early[1]))
    await asyncio.sleep(0.2)
    late = [await hub.events.append(run_id, "values", {"i": i}) for i in range(3, 40)]
    late.append(await hub.events.append(run_id, END, {"status": "success"}))

    everything = early + late
    start_ids = [e.id for batch in await asyncio.wait_for(from_start, 20) for e in batch]
    mid_ids = [e.id for batch in await asyncio.wait_for(mid, 20) for e in batch]
    assert start_ids == everything
    assert mid_ids == everything[2:]


async def test_a_follower_that_falls_behind_catches_up_in_batches(hub: StreamHub) -> None:
    run_id = uuid.uuid4().hex
    pipe = hub.events.redis.client().pipeline(transaction=False)
    for i in range(1200):  # more than one history page
        pipe.xadd(hub.events.key(run_id), {"e": "messages", "d": b'{"i": %d}' % i})
    pipe.xadd(hub.events.key(run_id), {"e": END, "d": b"{}"})
    await pipe.execute()

    batches = await asyncio.wait_for(_collect(hub, run_id), 20)
    assert sum(len(b) for b in batches) == 1201
    assert len(batches) < 10  # pages of history, not one write per entry
    assert batches[-1][-1].event == END


async def test_a_run_followed_while_the_reader_blocks_does_not_wait_out_the_block(hub: StreamHub) -> None:
    quiet, fresh = uuid.uuid4().hex, uuid.uuid4().hex
    await hub.events.append(quiet, "values", {})
    quiet_follower = asyncio.create_task(_collect(hub, quiet))
    await asyncio.sleep(0.3)  # the reader is now blocked (for BLOCK_MS) on the quiet run alone
    await hub.events.append(fresh, "metadata", {})
    follower = hub.follow(fresh, idle_s=30)
    first = await anext(follower)
    assert first is not None and [e.event for e in first] == ["metadata"]

    await asyncio.sleep(0.3)  # the fresh run joins the reader's read set
    appended = time.monotonic()
    await hub.events.append(fresh, "values", {"live": True})
    live = await asyncio.wait_for(anext(follower), 20)
    waited = time.monotonic() - appended

    assert live is not None and [e.event for e in live] == ["values"]
    assert waited < BLOCK_MS / 2000  # read by the extra read, not after the quiet run's block ran out
    await follower.aclose()
    await hub.events.append(quiet, END, {})
    await asyncio.wait_for(quiet_follower, 20)


async def test_followers_asking_at_once_share_one_fetch_and_a_failure_is_not_kept(hub: StreamHub) -> None:
    calls = 0

    async def status() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        if calls == 2:
            raise ConnectionError("pool busy")
        return f"answer {calls}"

    answers = await asyncio.gather(*(hub.shared("settled:r", status, max_age_s=0.2) for _ in range(1000)))
    assert calls == 1 and set(answers) == {"answer 1"}

    leaver = asyncio.create_task(hub.shared("settled:r", status, max_age_s=0.0))
    stayer = asyncio.create_task(hub.shared("settled:r", status, max_age_s=0.0))
    await asyncio.sleep(0.01)
    leaver.cancel()  # a follower that leaves mid-fetch does not cancel the fetch the other waits for
    with pytest.raises(ConnectionError):
        await stayer
    assert await hub.shared("settled:r", status, max_age_s=10.0) == "answer 3"  # the failure was not cached
