"""Model calls through router, balancer and real backends: streaming, failover, faults, cache, budget."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from core.errors import ConfigurationError, InvalidInputError
from core.settings import Settings
from observability.propagation import attached_from
from orchestrion.launcher import services
from orchestrion.launcher.ports import PortBook
from orchestrion.launcher.supervisor import launch
from routing.balancer import Balancer, FleetState, Health, HealthSettings
from routing.client import BudgetExceededError, ModelClient, ModelUnavailableError
from routing.fleet import Deployment, Fleet, embedded_fleet
from routing.ledger import Ledger, Refusal, Reservation, ResponseCache
from routing.redis_loop import LoopRedis
from routing.router import Router, TenantPolicy
from routing.services import api_keys, configured_fleet
from tests.conftest import CONSOLE, free_port
from tests.provider_simulator import ProviderSimulator

ASK = [{"role": "user", "content": "Name a primary colour."}]


def _client(
    valkey: str, fleet: Fleet, policy: str = "least_connections", api_keys: dict[str, str] | None = None,
    **health: float,
) -> ModelClient:  # fmt: skip
    redis_loop = LoopRedis(valkey)
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    state = FleetState(redis_loop, prefix, HealthSettings(**health))  # type: ignore[arg-type]
    router = Router(fleet.rules, None, lambda texts: [[0.0] for _ in texts], fleet.tiers)
    return ModelClient(fleet, router, Balancer(state, policy), Ledger(redis_loop, prefix),  # type: ignore[arg-type]
                       ResponseCache(redis_loop, prefix, fleet.cache_ttl_s), api_keys=api_keys)  # fmt: skip


def _complete(client: ModelClient, tenant: str = "acme", **kwargs: object) -> object:
    kwargs.setdefault("hint", "small")  # these fleets serve the small tier
    return anyio.run(lambda: client.complete(tenant, ASK, **kwargs))  # type: ignore[arg-type]


def _health(client: ModelClient, name: str) -> Health:
    async def read() -> Health:
        try:
            return (await client.balancer.state.snapshot([name]))[name]
        finally:
            await client.balancer.state.aclose()

    return anyio.run(read)


def test_real_local_model_streams_with_ttft_usage_and_cost(valkey: str, local_llm: str) -> None:
    client = _client(valkey, embedded_fleet([local_llm], "gemma-3-270m"))
    streamed: list[str] = []

    async def on_token(text: str) -> None:
        streamed.append(text)

    done = anyio.run(lambda: client.complete("acme", ASK, hint="small", max_tokens=12, on_token=on_token))

    assert done.text and "".join(streamed) == done.text
    assert done.ttft_s is not None and 0 < done.ttft_s <= done.latency_s
    assert 0 < done.tokens_out <= 12  # the limit holds although the server ignores max_completion_tokens
    assert done.usage_estimated  # llama.cpp streams no usage: counted here, and flagged as such
    assert done.cost_usd > 0 and done.deployment == "local-small-1"
    usage = anyio.run(client.ledger.usage, "acme")
    assert usage["small"]["calls"] == 1 and usage["small"]["tokens_out"] == done.tokens_out


def test_identical_request_is_served_from_cache_unless_bypassed(valkey: str, local_llm: str) -> None:
    client = _client(valkey, embedded_fleet([local_llm], "gemma-3-270m"))
    first = _complete(client, hint="small", max_tokens=8)
    second = _complete(client, hint="small", max_tokens=8)
    fresh = _complete(client, hint="small", max_tokens=8, bypass_cache=True)
    other_tenant = _complete(client, tenant="globex", hint="small", max_tokens=8)

    assert not first.cached and second.cached and second.text == first.text  # type: ignore[attr-defined]
    assert second.cost_usd == 0  # type: ignore[attr-defined]
    assert not fresh.cached and not other_tenant.cached  # type: ignore[attr-defined]
    assert anyio.run(client.ledger.usage, "acme")["small"]["calls"] == 2  # the cached answer cost nothing


@pytest.fixture
def second_llm(service_settings: Settings, tmp_path: Path) -> Iterator[dict[str, object]]:
    spec = services.llm_spec(service_settings, PortBook(tmp_path), CONSOLE, replica=2)
    holder: dict[str, object] = {"spec": spec, "process": launch(spec, tmp_path, CONSOLE), "dir": tmp_path}
    yield holder
    holder["process"].stop()  # type: ignore[attr-defined]


def test_stopped_backend_cools_down_and_recovers_when_restarted(
    valkey: str, local_llm: str, second_llm: dict[str, object]
) -> None:
    spec = second_llm["spec"]
    fleet = embedded_fleet([local_llm, spec.urls["llm_base_url"]], "gemma-3-270m")  # type: ignore[attr-defined]
    client = _client(valkey, fleet, "round_robin", failures_to_open=2, cooldown_s=1.0, probe_timeout_s=30)

    second_llm["process"].stop()  # type: ignore[attr-defined]
    answers = [_complete(client, hint="small", max_tokens=4, bypass_cache=True) for _ in range(6)]

    assert {a.deployment for a in answers} == {"local-small-1"}  # type: ignore[attr-defined]
    assert _health(client, "local-small-2").status in ("open", "half-open")
    assert any("local-small-2: connection failed" in a for ans in answers for a in ans.attempts)  # type: ignore[attr-defined]

    second_llm["process"] = launch(spec, second_llm["dir"], CONSOLE)  # type: ignore[arg-type]
    deadline = time.monotonic() + 60
    while _health(client, "local-small-2").status != "closed" and time.monotonic() < deadline:
        _complete(client, hint="small", max_tokens=4, bypass_cache=True)
        time.sleep(0.5)
    assert _health(client, "local-small-2").status == "closed"  # the half-open probe succeeded


@pytest.fixture
def simulators() -> Iterator[list[ProviderSimulator]]:
    sims = [ProviderSimulator("sim-a"), ProviderSimulator("sim-b")]
    yield sims
    for sim in sims:
        sim.close()


def _sim_fleet(sims: list[ProviderSimulator], **fleet: object) -> Fleet:
    deployments = [Deployment(name=s.name, tier="small", model=s.name, base_url=s.base_url, timeout_s=1.0,
                              price_in_per_m=1, price_out_per_m=1) for s in sims]  # fmt: skip
    return Fleet(deployments=deployments, retries=1, backoff_base_s=0.01, **fleet)  # type: ignore[arg-type]


def test_429_honours_retry_after_and_5xx_fails_over(valkey: str, simulators: list[ProviderSimulator]) -> None:
    a, b = simulators
    client = _client(valkey, _sim_fleet(simulators), "round_robin", failures_to_open=5)
    a.behaviour.status, a.behaviour.retry_after_s = 429, 2
    opened = time.monotonic()

    answers = [_complete(client, bypass_cache=True) for _ in range(4)]

    assert {x.deployment for x in answers} == {"sim-b"}  # type: ignore[attr-defined]
    assert a.behaviour.calls == 1  # after its 429, sim-a is left alone for Retry-After
    assert _health(client, "sim-a").status == "open"

    b.behaviour.status = 503
    a.behaviour.status = 200
    # Polled, not slept: on a loaded machine the 429 itself may come well after `opened`.
    while _health(client, "sim-a").status != "closed" and time.monotonic() < opened + 8:
        time.sleep(0.05)
    assert time.monotonic() - opened >= 2.0  # open for the whole Retry-After
    assert _health(client, "sim-a").status == "closed"  # a 429 is not a failure: no probe needed
    calls_before = b.behaviour.calls
    assert _complete(client, bypass_cache=True).deployment == "sim-a"  # type: ignore[attr-defined]
    assert b.behaviour.calls - calls_before in (0, 2)  # tried (and retried once) only if picked first


def test_timeouts_are_retried_then_reported(valkey: str, simulators: list[ProviderSimulator]) -> None:
    for sim in simulators:
        sim.behaviour.delay_s = 3.0  # beyond the deployments' 1 s timeout
    client = _client(valkey, _sim_fleet(simulators, fallback_to_next_tier=False))
    with pytest.raises(ModelUnavailableError) as raised:
        _complete(client, bypass_cache=True)
    assert sorted(raised.value.attempts) == sorted(f"{s.name}: timeout" for s in simulators for _ in range(2))
    assert all(s.behaviour.calls == 2 for s in simulators)  # one try + one retry each
    assert all(_health(client, s.name).in_flight == 0 for s in simulators)  # every lease went back


def test_an_unavailable_model_tells_the_client_nothing_of_the_fleet(
    valkey: str, simulators: list[ProviderSimulator], caplog: pytest.LogCaptureFixture
) -> None:
    simulators[0].behaviour.status = 503
    simulators[1].behaviour.delay_s = 3.0  # beyond the 1 s timeout
    closed_port = free_port()
    fleet = _sim_fleet(simulators, fallback_to_next_tier=False)
    fleet.deployments.append(fleet.deployments[0].model_copy(
        update={"name": "gpu-box-7", "base_url": f"http://127.0.0.1:{closed_port}/v1"}))  # fmt: skip
    client = _client(valkey, fleet)
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    request_trace = attached_from({"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    logs = caplog.at_level(logging.WARNING, "routing.client")
    with logs, pytest.raises(ModelUnavailableError) as raised, request_trace:
        _complete(client, bypass_cache=True)

    told = str(raised.value)
    assert f"trace id {trace_id}" in told and "retry later" in told
    ports = [str(s.port) for s in simulators] + [str(closed_port)]
    for internal in ("sim-a", "sim-b", "gpu-box-7", "127.0.0.1", *ports, "503", "timeout", "connection", "Error"):
        assert internal not in told, (internal, told)
    [logged] = [r for r in caplog.records if r.getMessage() == "no model deployment could answer"]
    assert {"sim-a: HTTP 503", "sim-b: timeout", "gpu-box-7: connection failed"} <= set(vars(logged)["attempts"])


def test_a_cancelled_call_returns_its_lease_at_once(valkey: str, simulators: list[ProviderSimulator]) -> None:
    for sim in simulators:
        sim.behaviour.delay_s = 0.9  # within the 1 s timeout: the call is still running when it is cancelled
    client = _client(valkey, _sim_fleet(simulators))
    state, names = client.balancer.state, [s.name for s in simulators]

    async def in_flight() -> int:
        return sum(h.in_flight for h in (await state.snapshot(names)).values())

    async def scenario() -> tuple[int, int]:
        call = asyncio.create_task(client.complete("acme", ASK, hint="small", bypass_cache=True))
        await asyncio.sleep(0.4)
        during = await in_flight()
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call
        after = await in_flight()  # at once, not when the lease (1 s timeout + 5 s margin) would expire
        await state.aclose()
        return during, after

    assert asyncio.run(scenario()) == (1, 0)


# At $1 per million tokens each way, a call of ASK with the default 256-token limit may cost at most ~$443e-6
# (its request's bytes and the whole limit); answering 256 tokens, it costs ~$256e-6.
FULL_ANSWER = 256


def test_budget_refuses_or_downgrades(valkey: str, simulators: list[ProviderSimulator]) -> None:
    for sim in simulators:
        sim.behaviour.tokens = FULL_ANSWER
    fleet = _sim_fleet(simulators)
    fleet.tenants["thrifty"] = TenantPolicy(budget_usd=0.0006)  # one call fits; two do not
    fleet.tenants["frugal"] = TenantPolicy(budget_usd=0.0006, over_budget="downgrade", max_tier="small")
    client = _client(valkey, fleet)
    _complete(client, tenant="thrifty", bypass_cache=True)
    with pytest.raises(BudgetExceededError, match=r"within its \$0.0006 budget"):
        _complete(client, tenant="thrifty", bypass_cache=True)
    _complete(client, tenant="frugal", bypass_cache=True)
    downgraded = _complete(client, tenant="frugal", bypass_cache=True)
    assert "over budget" in downgraded.decision.reason  # type: ignore[attr-defined]


def test_concurrent_calls_cannot_overspend_a_budget(valkey: str, simulators: list[ProviderSimulator]) -> None:
    for sim in simulators:
        sim.behaviour.tokens, sim.behaviour.delay_s = FULL_ANSWER, 0.3
    fleet = _sim_fleet(simulators)
    fleet.tenants["capped"] = TenantPolicy(budget_usd=0.0015)  # three calls' largest cost; 20 ask at once
    client = _client(valkey, fleet)

    async def one() -> str:
        try:
            await client.complete("capped", ASK, hint="small", bypass_cache=True)
            return "answered"
        except BudgetExceededError:
            return "refused"

    async def burst() -> list[str]:
        return list(await asyncio.gather(*(one() for _ in range(20))))

    outcomes = anyio.run(burst)
    spent = anyio.run(client.ledger.spent, "capped")
    assert spent <= 0.0015, f"spent ${spent} of a $0.0015 budget ({outcomes.count('answered')} calls answered)"
    assert outcomes.count("answered") >= 1 and outcomes.count("refused") >= 1, outcomes


def test_a_failed_call_gives_its_reservation_back_and_a_dead_ones_expires(
    valkey: str, simulators: list[ProviderSimulator]
) -> None:
    fleet = _sim_fleet(simulators)
    fleet.tenants["careful"] = TenantPolicy(budget_usd=0.0006)
    client = _client(valkey, fleet)
    for sim in simulators:
        sim.behaviour.status = 500
    for _ in range(3):  # each failure releases what it held, or the second would not fit
        with pytest.raises(ModelUnavailableError):
            _complete(client, tenant="careful", bypass_cache=True)
    for sim in simulators:
        sim.behaviour.status = 200
    assert anyio.run(client.ledger.spent, "careful") == 0

    async def held_by_a_process_that_died() -> tuple[object, object, object]:
        first = await client.ledger.reserve("careful", 0.0005, 0.0006, ttl_s=1.0)  # never settled
        refused = await client.ledger.reserve("careful", 0.0005, 0.0006, ttl_s=1.0)
        await asyncio.sleep(1.2)
        return first, refused, await client.ledger.reserve("careful", 0.0005, 0.0006, ttl_s=1.0)

    first, refused, later = anyio.run(held_by_a_process_that_died)
    assert isinstance(first, Reservation) and isinstance(later, Reservation)
    assert isinstance(refused, Refusal) and refused.reserved_usd == pytest.approx(0.0005)


def test_a_request_the_provider_refuses_is_neither_retried_nor_held_against_anyone(
    valkey: str, simulators: list[ProviderSimulator]
) -> None:
    for sim in simulators:
        sim.behaviour.status = 400  # e.g. a prompt over the context length: every deployment would refuse it
    client = _client(valkey, _sim_fleet(simulators), failures_to_open=1)
    for _ in range(3):
        with pytest.raises(InvalidInputError) as refused:
            _complete(client, bypass_cache=True)
        # The provider's words say what to change; which of our deployments said them is not the caller's.
        assert str(refused.value) == "the model refused the request (HTTP 400: simulated 400)"
    assert sum(s.behaviour.calls for s in simulators) == 3  # one deployment each time, no retry, no failover
    assert all(_health(client, s.name).status == "closed" for s in simulators)  # no circuit opened


def test_a_tier_the_tenants_policy_caps_does_not_fall_back_above_it(
    valkey: str, simulators: list[ProviderSimulator]
) -> None:
    small, large = simulators
    small.behaviour.status = 503
    fleet = _sim_fleet(simulators)
    fleet.deployments[1] = fleet.deployments[1].model_copy(update={"tier": "large"})
    fleet.tenants["capped"] = TenantPolicy(max_tier="small")
    client = _client(valkey, fleet)
    with pytest.raises(ModelUnavailableError):
        _complete(client, tenant="capped", bypass_cache=True)
    assert large.behaviour.calls == 0
    answer = _complete(client, tenant="free", bypass_cache=True)  # no cap: small fails, large answers
    assert answer.deployment == large.name  # type: ignore[attr-defined]


def test_usage_streamed_in_parts_is_added_up(valkey: str, simulators: list[ProviderSimulator]) -> None:
    for sim in simulators:
        sim.behaviour.split_usage = True
    answer = _complete(_client(valkey, _sim_fleet(simulators)), bypass_cache=True)
    assert (answer.tokens_in, answer.tokens_out, answer.usage_estimated) == (7, 5, False)  # type: ignore[attr-defined]


def test_a_deployments_key_comes_from_settings_as_well_as_the_environment(
    valkey: str, simulators: list[ProviderSimulator]
) -> None:
    fleet = _sim_fleet(simulators)
    fleet.deployments = [d.model_copy(update={"api_key_env": "SIM_KEY_FROM_DOTENV"}) for d in fleet.deployments]
    answer = _complete(_client(valkey, fleet, api_keys={"SIM_KEY_FROM_DOTENV": "sk-test-1"}), bypass_cache=True)
    sim = next(s for s in simulators if s.name == answer.deployment)  # type: ignore[attr-defined]
    assert sim.behaviour.authorization == "Bearer sk-test-1"
    settings = Settings(models={"openai_api_key": "sk-from-dotenv"})  # type: ignore[arg-type]
    assert api_keys(settings) == {"OPENAI_API_KEY": "sk-from-dotenv"}


def test_a_provider_url_without_models_says_to_write_a_fleet_file() -> None:
    settings = Settings(models={"openai_base_url": "http://127.0.0.1:9/v1"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"OPENAI_BASE_URL is set, but not which models .*FLEET_FILE"):
        configured_fleet(settings)


def test_fleet_file_errors_name_the_field(tmp_path: Path) -> None:
    from core.errors import ConfigurationError
    from routing.fleet import load_fleet

    path = tmp_path / "fleet.yaml"
    path.write_text("deployments:\n  - name: x\n    tier: huge\n    model: m\n")
    with pytest.raises(ConfigurationError, match="unknown tiers"):
        load_fleet(path)
    path.write_text("deployments:\n  - name: x\n    tier: small\n    model: m\n    price_in_per_m: -1\n")
    with pytest.raises(ConfigurationError, match="price_in_per_m"):
        load_fleet(path)
