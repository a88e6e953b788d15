"""Balancing policies, leases and circuit health against a real Valkey shared by several clients."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio as aioredis
from pydantic import ValidationError

from routing.balancer import Balancer, FleetState, HealthSettings, Lease, Policy
from routing.redis_loop import LoopRedis


@dataclass(frozen=True)
class Node:
    name: str
    weight: float = 1.0
    timeout_s: float = 60.0
    max_concurrency: int = 1000


NODES = [Node("a"), Node("b"), Node("c")]


def _state(valkey: str, prefix: str, **health: float) -> FleetState:
    return FleetState(LoopRedis(valkey), prefix, HealthSettings(**health))  # type: ignore[arg-type]


def run(scenario: Callable[[], Awaitable[None]], *states: FleetState) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            for state in states:
                await state.aclose()

    asyncio.run(main())


async def _picks(balancer: Balancer, n: int, nodes: list[Node] = NODES, group: str = "small") -> Counter[str]:
    """`n` picks, each lease returned before the next (so load does not steer them)."""
    picks: Counter[str] = Counter()
    for _ in range(n):
        lease = await balancer.pick(group, nodes)
        assert lease is not None
        picks[lease.name] += 1
        await balancer.state.release(lease)
    return picks


async def _on(balancer: Balancer, name: str) -> Lease:
    """A lease on `name` specifically."""
    lease = await balancer.pick("small", [n for n in NODES if n.name == name])
    assert lease is not None and lease.name == name
    return lease


async def _measure(state: FleetState, name: str, seconds: float, times: int = 1) -> None:
    balancer = Balancer(state, "round_robin")
    for _ in range(times):
        await state.succeeded(await _on(balancer, name), seconds)


def test_round_robin_takes_equal_turns_and_honours_weights(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    balancer = Balancer(state, "round_robin")

    async def scenario() -> None:
        assert await _picks(balancer, 300) == {"a": 100, "b": 100, "c": 100}
        assert await _picks(balancer, 300, [Node("a", 2), Node("b", 1)], "w") == {"a": 200, "b": 100}

    run(scenario, state)


def test_least_connections_sees_calls_in_flight_from_other_processes(valkey: str, key_prefix: str) -> None:
    ours, theirs = _state(valkey, key_prefix), _state(valkey, key_prefix)  # two clients, one fleet
    mine, other = Balancer(ours, "least_connections", random.Random(1)), Balancer(theirs, "round_robin")

    async def scenario() -> None:
        held = [await _on(other, "a"), await _on(other, "a"), await _on(other, "b")]
        first = await mine.pick("small", NODES)
        assert first is not None and first.name == "c"
        held.append(await _on(other, "c"))
        second = await mine.pick("small", NODES)  # a 2, b 1, c 2 in flight
        assert second is not None and second.name == "b"
        for lease in held:
            await theirs.release(lease)
        await ours.release(first)
        await ours.release(second)
        assert {n: h.in_flight for n, h in (await ours.snapshot(["a", "b", "c"])).items()} == {"a": 0, "b": 0, "c": 0}

    run(scenario, ours, theirs)


def test_concurrent_acquires_from_many_tasks_keep_counts_exact(valkey: str, key_prefix: str) -> None:
    states = [_state(valkey, key_prefix) for _ in range(4)]  # four clients, each with its own connection
    policies: list[Policy] = ["least_connections", "latency_aware", "round_robin", "least_connections"]
    balancers = [Balancer(s, p, random.Random(i)) for i, (s, p) in enumerate(zip(states, policies, strict=True))]

    async def scenario() -> None:
        async def take(i: int) -> Lease:
            lease = await balancers[i % 4].pick("small", NODES)
            assert lease is not None
            return lease

        leases = await asyncio.gather(*(take(i) for i in range(300)))
        assert len({lease.id for lease in leases}) == 300
        taken = Counter(lease.name for lease in leases)
        health = await states[0].snapshot(["a", "b", "c"])
        assert {n: h.in_flight for n, h in health.items()} == taken
        # Least connections and the load term keep it even: no node holds far more than its share.
        assert max(taken.values()) - min(taken.values()) <= 100, taken

        half = leases[::2]
        await asyncio.gather(*(states[i % 4].release(lease) for i, lease in enumerate(half)))
        left = Counter(lease.name for lease in leases[1::2])
        health = await states[1].snapshot(["a", "b", "c"])
        assert {n: h.in_flight for n, h in health.items()} == {n: left.get(n, 0) for n in "abc"}
        await asyncio.gather(*(states[2].release(lease) for lease in leases[1::2]))
        assert all(h.in_flight == 0 for h in (await states[3].snapshot(["a", "b", "c"])).values())

    run(scenario, *states)


def test_a_crashed_holders_lease_expires_and_stops_counting(valkey: str, key_prefix: str) -> None:
    state, crashed = _state(valkey, key_prefix, lease_margin_s=0.2), _state(valkey, key_prefix, lease_margin_s=0.2)
    alive = Balancer(state, "least_connections")

    async def scenario() -> None:
        # A process takes two leases on a deployment with a 0.3 s timeout and dies: it never returns them.
        dying = Balancer(crashed, "least_connections")
        short = [Node("a", timeout_s=0.3)]
        assert await dying.pick("small", short) is not None and await dying.pick("small", short) is not None
        await crashed.aclose()
        await asyncio.sleep(0.3)
        before_kept = time.monotonic()
        kept = await alive.pick("small", [Node("a", timeout_s=30)])  # a live call with a long timeout
        assert kept is not None
        assert (await state.snapshot(["a"]))["a"].in_flight == 3

        await asyncio.sleep(0.4)  # the dead leases are now beyond their 0.3 s timeout + 0.2 s margin
        health = (await state.snapshot(["a"]))["a"]
        assert health.in_flight == 1  # the live call still counts
        # Its start is the oldest left: the dead calls' starts (0.3 s older) went with their leases.
        assert health.oldest_in_flight_s is not None
        assert health.oldest_in_flight_s < time.monotonic() - before_kept + 0.1
        await state.release(kept)
        assert (await state.snapshot(["a"]))["a"].in_flight == 0

    run(scenario, state)


def test_latency_aware_avoids_the_slow_deployment(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    balancer = Balancer(state, "latency_aware", random.Random(7))

    async def scenario() -> None:
        await _measure(state, "a", 0.10, times=5)
        await _measure(state, "b", 1.00, times=5)  # ten times slower
        await _measure(state, "c", 0.12, times=5)
        picks = await _picks(balancer, 600)
        assert picks["b"] == 0, picks  # b is one of the two choices a third of the time, and always loses
        assert picks["a"] > 250 and picks["c"] > 100

    run(scenario, state)


def test_peak_ewma_steers_away_from_a_stuck_call_before_it_returns(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    pinned = Balancer(state, "round_robin")
    balancer = Balancer(state, "latency_aware", random.Random(5))

    async def scenario() -> None:
        for name in "abc":
            await _measure(state, name, 0.05, times=3)  # all equally fast so far
        stuck = await _on(pinned, "b")  # b's next call hangs
        await asyncio.sleep(0.6)
        # a and c are busier (two fresh calls each) than b (one call): by load alone b is the cheapest,
        # (0.05 x 2 vs 0.05 x 3); the age of its stuck call (0.6 s > its 0.05 s EWMA) must say otherwise.
        busy = [await _on(pinned, name) for name in ("a", "a", "c", "c")]
        picks: Counter[str] = Counter()
        for _ in range(60):
            lease = await balancer.pick("small", NODES)
            assert lease is not None
            picks[lease.name] += 1
            await state.release(lease)
        assert picks["b"] == 0, picks
        # Nothing has returned yet: the EWMA itself did not move.
        assert (await state.snapshot(["b"]))["b"].ewma_s == pytest.approx(0.05)

        await state.succeeded(stuck, 0.05)  # the call returns (as fast as ever, say): b is cheap again
        for lease in busy:
            await state.release(lease)
        assert (await _picks(balancer, 300))["b"] > 60

    run(scenario, state)


def test_failures_open_the_circuit_then_one_probe_closes_it(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix, failures_to_open=3, cooldown_s=0.5, probe_timeout_s=5)
    balancer = Balancer(state, "round_robin")

    async def status(name: str) -> str:
        return (await state.snapshot([name]))[name].status

    async def scenario() -> None:
        assert not await state.failed(await _on(balancer, "b"))
        assert not await state.failed(await _on(balancer, "b"))
        assert await state.failed(await _on(balancer, "b"))  # the third opens it
        assert await status("b") == "open"
        picked = await _picks(balancer, 20)
        assert set(picked) == {"a", "c"}

        await asyncio.sleep(0.7)  # the first cooldown is cooldown_s (0.5 s)
        assert await status("b") == "half-open"
        probe = await balancer.pick("small", [NODES[1]])
        assert probe is not None and probe.probe
        assert await balancer.pick("small", [NODES[1]]) is None  # exactly one probe at a time
        assert await state.failed(probe)  # the probe failed: open again, for twice as long (1 s)
        await asyncio.sleep(0.6)
        assert await status("b") == "open"
        await asyncio.sleep(0.6)
        probe = await balancer.pick("small", [NODES[1]])
        assert probe is not None and probe.probe
        await state.succeeded(probe, 0.1)
        assert await status("b") == "closed"
        after = await balancer.pick("small", [NODES[1]])
        assert after is not None and not after.probe

    run(scenario, state)


def test_calls_failing_together_open_the_circuit_once_and_a_released_probe_frees_its_slot(
    valkey: str, key_prefix: str
) -> None:
    state = _state(valkey, key_prefix, failures_to_open=2, cooldown_s=0.5, probe_timeout_s=5)
    balancer = Balancer(state, "round_robin")

    async def status(name: str) -> str:
        return (await state.snapshot([name]))[name].status

    async def scenario() -> None:
        in_flight = [await _on(balancer, "b") for _ in range(6)]  # a deployment dies with 6 calls on it
        opened = [await state.failed(lease) for lease in in_flight]
        assert opened == [False, True, True, True, True, True]
        await asyncio.sleep(0.7)  # one opening: cooldown_s (0.5 s), not doubled by each later failure
        assert await status("b") == "half-open"

        probe = await balancer.pick("small", [NODES[1]])
        assert probe is not None and probe.probe
        await state.release(probe)  # its caller went away: it proved nothing, so the next call probes
        again = await balancer.pick("small", [NODES[1]])
        assert again is not None and again.probe

    run(scenario, state)


def test_retry_after_opens_for_that_long_and_no_healthy_node_means_none(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    balancer = Balancer(state, "least_connections")

    async def scenario() -> None:
        for node in NODES:
            assert await state.failed(await _on(Balancer(state, "round_robin"), node.name), retry_after_s=0.4)
        assert await balancer.pick("small", NODES) is None
        await asyncio.sleep(0.5)
        assert await balancer.pick("small", NODES) is not None
        assert await balancer.pick("small", NODES, exclude={"a", "b", "c"}) is None

    run(scenario, state)


def test_latency_aware_wins_a_recovered_deployment_back(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix, latency_memory_s=0.5, outlier_probe_s=0.4)
    balancer = Balancer(state, "latency_aware", random.Random(3))

    async def scenario() -> None:
        await _measure(state, "b", 1.0)
        await _measure(state, "a", 0.1)
        await _measure(state, "c", 0.1)
        assert "b" not in await _picks(balancer, 100)

        await asyncio.sleep(0.6)  # b got no traffic, so nothing refreshed its old, slow estimate
        await _measure(state, "a", 0.1)
        await _measure(state, "c", 0.1)
        picks = await _picks(balancer, 300)
        assert picks["b"] > 30, picks  # unmeasured again: it is tried, and can prove it recovered

    run(scenario, state)


async def _ten_times_slower_b(state: FleetState, samples: int = 5) -> None:
    for name, seconds in (("a", 0.1), ("b", 1.0), ("c", 0.1)):
        await _measure(state, name, seconds, times=samples)


@pytest.mark.parametrize("policy", ["least_connections", "round_robin"])
def test_a_latency_outlier_is_skipped_by_load_blind_policies(valkey: str, key_prefix: str, policy: Policy) -> None:
    state = _state(valkey, key_prefix, outlier_min_samples=5)
    balancer = Balancer(state, policy, random.Random(11))

    async def scenario() -> None:
        await _ten_times_slower_b(state, samples=4)
        # Four samples are too few to judge: b keeps its share.
        assert (await _picks(balancer, 90))["b"] >= 20
        await _measure(state, "b", 1.0)
        picks = await _picks(balancer, 300)
        assert picks["b"] == 0 and picks["a"] >= 120 and picks["c"] >= 120, picks  # b's share spread evenly

    run(scenario, state)


def test_a_stalled_call_makes_its_deployment_an_outlier_before_it_returns(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    pinned, balancer = Balancer(state, "round_robin"), Balancer(state, "least_connections", random.Random(2))

    async def scenario() -> None:
        for name in "abc":
            await _measure(state, name, 0.05, times=5)
        stuck = await _on(pinned, "b")
        await asyncio.sleep(0.2)  # b's stuck call is now older than 3x the others' 0.05 s
        busy = [await _on(pinned, name) for name in ("a", "a", "c", "c")]  # fresh calls
        loads = {n: h.in_flight for n, h in (await state.snapshot(["a", "b", "c"])).items()}
        assert loads == {"a": 2, "b": 1, "c": 2}  # by load alone, least connections would choose b
        picks = await _picks(balancer, 30)
        assert picks["b"] == 0, picks
        for lease in [stuck, *busy]:
            await state.release(lease)

    run(scenario, state)


def test_the_last_deployment_standing_is_never_skipped(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    balancer = Balancer(state, "least_connections")

    async def scenario() -> None:
        await _ten_times_slower_b(state)
        assert (await _picks(balancer, 10, [Node("b")]))["b"] == 10
        lease = await balancer.pick("small", NODES, exclude={"a", "c"})  # as a retry after a and c failed
        assert lease is not None and lease.name == "b"
        await state.release(lease)
        for name in "ac":  # the fast ones' circuits open: the slow one is all that is left
            assert await state.failed(await _on(Balancer(state, "round_robin"), name), retry_after_s=30)
        assert (await _picks(balancer, 10))["b"] == 10

    run(scenario, state)


def test_a_skipped_deployment_is_probed_and_returns_when_fast_again(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix, outlier_probe_s=0.4, latency_memory_s=5)
    balancer = Balancer(state, "least_connections", random.Random(4))

    async def scenario() -> None:
        await _ten_times_slower_b(state)
        assert "b" not in await _picks(balancer, 60)
        await asyncio.sleep(0.45)
        probe = await balancer.pick("small", NODES)  # b's last sample is now old enough
        assert probe is not None and probe.name == "b" and probe.probe
        assert "b" not in await _picks(balancer, 60)  # one probe at a time
        await state.succeeded(probe, 1.0)  # still slow
        assert "b" not in await _picks(balancer, 60)  # and the next probe waits outlier_probe_s again
        await asyncio.sleep(0.45)
        probe = await balancer.pick("small", NODES)
        assert probe is not None and probe.name == "b" and probe.probe
        await state.succeeded(probe, 0.1)  # recovered: the probe's answer replaces the slow EWMA
        assert (await state.snapshot(["b"]))["b"].ewma_s == pytest.approx(0.1)
        picks = await _picks(balancer, 300)
        assert picks["b"] > 70, picks

    run(scenario, state)


def test_probes_must_come_before_the_latency_estimate_expires() -> None:
    with pytest.raises(ValidationError, match="outlier_probe_s"):
        HealthSettings(outlier_probe_s=30, latency_memory_s=30)


def test_a_call_costs_two_round_trips(valkey: str, key_prefix: str) -> None:
    name = f"fleet-{key_prefix}"
    state = FleetState(LoopRedis(f"{valkey}?client_name={name}"), key_prefix)
    balancer = Balancer(state, "latency_aware", random.Random(1))
    marker = f"done-{key_prefix}"

    async def scenario() -> None:
        observer = aioredis.Redis.from_url(valkey)
        try:
            warm = await balancer.pick("small", NODES)  # connects and loads the scripts
            assert warm is not None
            await state.succeeded(warm, 0.1)
            [ours] = [c["addr"] for c in await observer.client_list() if c["name"] == name]
            seen: list[str] = []
            async with observer.monitor() as monitor:  # every command Valkey receives, from whom
                for _ in range(10):
                    lease = await balancer.pick("small", NODES)
                    assert lease is not None
                    await state.succeeded(lease, 0.1)
                await observer.echo(marker)
                async for command in monitor.listen():
                    if marker in command["command"]:
                        break
                    if f"{command['client_address']}:{command['client_port']}" == ours:
                        seen.append(command["command"].split()[0])
            assert seen == ["EVALSHA"] * 20  # pick + succeeded per call; the scripts' own commands run inside
        finally:
            await observer.aclose()

    run(scenario, state)


def test_a_deployment_at_max_concurrency_is_passed_over_until_a_lease_returns(valkey: str, key_prefix: str) -> None:
    other_process, this_process = _state(valkey, key_prefix), _state(valkey, key_prefix)

    async def scenario() -> None:
        small, big = Node("a", max_concurrency=2), Node("b", max_concurrency=1)
        held = [await Balancer(other_process, "least_connections").pick("small", [small]) for _ in range(2)]
        assert all(lease is not None and lease.name == "a" for lease in held)

        balancer = Balancer(this_process, "least_connections")
        assert await balancer.pick("small", [small]) is None  # full, and counted across processes
        on_b = await balancer.pick("small", [small, big])
        assert on_b is not None and on_b.name == "b"  # a is full
        assert await balancer.pick("small", [small, big]) is None  # both full: the caller falls back or refuses

        lease = held.pop()
        assert lease is not None
        await other_process.release(lease)
        freed = await balancer.pick("small", [small, big])
        assert freed is not None and freed.name == "a"

    run(scenario, other_process, this_process)
