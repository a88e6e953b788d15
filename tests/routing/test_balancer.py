"""Balancing policies and circuit health against a real Valkey shared by several clients."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import dataclass

import redis

from routing.balancer import Balancer, FleetState, HealthSettings


@dataclass(frozen=True)
class Node:
    name: str
    weight: float = 1.0


NODES = [Node("a"), Node("b"), Node("c")]


def _state(valkey: str, prefix: str, **health: float) -> FleetState:
    return FleetState(redis.Redis.from_url(valkey), prefix, HealthSettings(**health))  # type: ignore[arg-type]


def test_round_robin_takes_equal_turns_and_honours_weights(valkey: str, key_prefix: str) -> None:
    balancer = Balancer(_state(valkey, key_prefix), "round_robin")
    picks = Counter(balancer.pick("small", NODES).name for _ in range(300))  # type: ignore[union-attr]
    assert picks == {"a": 100, "b": 100, "c": 100}
    weighted = [Node("a", 2), Node("b", 1)]
    picks = Counter(balancer.pick("w", weighted).name for _ in range(300))  # type: ignore[union-attr]
    assert picks == {"a": 200, "b": 100}


def test_least_connections_sees_calls_in_flight_from_other_processes(valkey: str, key_prefix: str) -> None:
    ours, theirs = _state(valkey, key_prefix), _state(valkey, key_prefix)  # two clients, one fleet
    theirs.acquire("a")
    theirs.acquire("a")
    theirs.acquire("b")
    balancer = Balancer(ours, "least_connections", random.Random(1))
    assert balancer.pick("small", NODES).name == "c"  # type: ignore[union-attr]
    ours.acquire("c")
    ours.acquire("c")
    assert balancer.pick("small", NODES).name == "b"  # type: ignore[union-attr]
    for name in ("a", "a", "b", "c", "c"):
        theirs.release(name)
    assert ours.in_flight(["a", "b", "c"]) == {"a": 0, "b": 0, "c": 0}


def test_latency_aware_avoids_the_slow_deployment(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    for _ in range(5):
        state.record_latency("a", 0.10)
        state.record_latency("b", 1.00)  # ten times slower
        state.record_latency("c", 0.12)
    balancer = Balancer(state, "latency_aware", random.Random(7))
    picks = Counter(balancer.pick("small", NODES).name for _ in range(600))  # type: ignore[union-attr]
    assert picks["b"] == 0, picks  # b is one of the two choices a third of the time, and always loses
    assert picks["a"] > 250 and picks["c"] > 100


def test_failures_open_the_circuit_then_one_probe_closes_it(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix, failures_to_open=3, cooldown_s=0.5, probe_timeout_s=5)
    balancer = Balancer(state, "round_robin")
    assert not state.record_failure("b") and not state.record_failure("b")
    assert state.record_failure("b")  # the third opens it
    assert state.status("b") == "open"
    assert {balancer.pick("small", NODES).name for _ in range(20)} == {"a", "c"}  # type: ignore[union-attr]

    time.sleep(0.7)  # the first cooldown is cooldown_s (0.5 s)
    assert state.status("b") == "half-open"
    assert state.admit("b") and not state.admit("b")  # exactly one probe at a time
    state.record_success("b")
    assert state.status("b") == "closed" and state.admit("b")


def test_retry_after_opens_for_that_long_and_no_healthy_node_means_none(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix)
    balancer = Balancer(state, "least_connections")
    for node in NODES:
        state.open_for(node.name, 0.4)
    assert balancer.pick("small", NODES) is None
    time.sleep(0.5)
    assert balancer.pick("small", NODES) is not None
    assert balancer.pick("small", NODES, exclude={"a", "b", "c"}) is None


def test_latency_aware_wins_a_recovered_deployment_back(valkey: str, key_prefix: str) -> None:
    state = _state(valkey, key_prefix, latency_memory_s=0.5)
    state.record_latency("b", 1.0)
    balancer = Balancer(state, "latency_aware", random.Random(3))
    state.record_latency("a", 0.1)
    state.record_latency("c", 0.1)
    assert "b" not in {balancer.pick("small", NODES).name for _ in range(100)}  # type: ignore[union-attr]

    time.sleep(0.6)  # b got no traffic, so nothing refreshed its old, slow estimate
    state.record_latency("a", 0.1)
    state.record_latency("c", 0.1)
    picks = Counter(balancer.pick("small", NODES).name for _ in range(300))  # type: ignore[union-attr]
    assert picks["b"] > 30, picks  # unmeasured again: it is tried, and can prove it recovered
