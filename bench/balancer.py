"""Balancer under a degraded backend: client-side p50/p99 of ModelClient.complete per policy.

Three ProviderSimulator backends (tests/provider_simulator.py, OpenAI-compatible streaming on loopback) answer
after `--delay-ms` (default 250 ms) each; they run in a child process of their own, as a remote provider would not
share the client's CPU and GIL. One ModelClient (router -> balancer -> streaming call) serves them, all three in
tier "small", hint="small", bypass_cache=True, retries 1, with FleetState in a private Valkey started here (the
launcher's redis_spec) and stopped on exit. Health settings are the fleet's defaults, so every policy skips a
latency outlier (peak-EWMA above 3x the best of the others, probed once per 10 s). `--clients` tasks (default 8)
call it in a closed loop for `--seconds` per phase (default 90; --quick 20), each loop bounded by the deadline and
a call count.

For each policy (round_robin, least_connections, latency_aware), each with a fresh FleetState prefix:
  * healthy  - all three backends at the base delay for the whole phase (the baseline, same run, same policy);
  * degraded - halfway through, backend sim-0 becomes 10x slower.
Reported: p50/p99 over the whole phase and over the second half (calls started after the slowdown), the share
of second-half calls that went to the slow backend (and how many of them started before any slow call could
return), client CPU per call and event-loop lag.
Ratio = degraded second-half p99 / healthy whole-phase p99 of the same policy.
Target: latency_aware and least_connections ratio <= 1.5 (round_robin is shown as the load-blind reference).

Two conditions make a ratio meaningless, and the verdict is then printed as INVALID instead of PASS/MISS:
  * the client process is saturated: healthy p50 above 1.5x the backend delay (its own queueing sets latency).
    One ModelClient process does ~150 calls/s on this 2-core machine, so 32 clients on 50 ms backends (640 calls/s
    offered) measure the client, not the balancer; the defaults offer ~30 calls/s (~25% of a core);
  * the degraded window is too small for a p99: the healthy phase of the same policy made fewer than
    MIN_WINDOW_CALLS calls in the span of the degraded window (its second half). Whatever the policy, the calls
    that start on sim-0 before anything could show it is slow (about clients/3 of them) are slow; in a window of a
    few hundred calls they alone are the top 1%, so the p99 would measure that detection transient's length
    relative to the window, not the steady degraded state. The defaults give ~1,300 calls.

    .venv/bin/python -m bench.balancer [--quick] [--seconds S] [--clients N] [--delay-ms MS] [--policies a,b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from rich.console import Console

from bench._report import ERR, OUT, machine_note, percentile, progress, table, verdict
from core.errors import OrchestrionError
from routing.balancer import Balancer, FleetState, Policy
from routing.client import ModelClient
from routing.fleet import Deployment, Fleet
from routing.ledger import Ledger, ResponseCache
from routing.redis_loop import LoopRedis
from routing.router import Router

POLICIES: tuple[Policy, ...] = ("round_robin", "least_connections", "latency_aware")
TARGETED: tuple[Policy, ...] = ("least_connections", "latency_aware")
BACKENDS = 3
DELAY_S = 0.25  # default base delay; --delay-ms changes it, the slow backend is always SLOWDOWN x slower
CLIENTS = 8
SECONDS, QUICK_SECONDS = 90.0, 20.0
SLOWDOWN = 10.0
TARGET_RATIO = 1.5
SATURATED = 1.5  # healthy p50 above this many backend delays: the client, not the backends, sets latency
MIN_WINDOW_CALLS = 1000  # a p99 over fewer calls is decided by a handful of them
MAX_CALLS_PER_CLIENT = 100_000  # bounds every client loop besides the deadline
MAX_COMMANDS = 1_000  # bounds the simulator host's command loop
LAG_TICK_S = 0.01


# --- simulated providers, in a child process -------------------------------------------------------------------


def _host_simulators(count: int, conn: Connection) -> None:
    """Child process: `count` ProviderSimulators; obeys (index, delay_s) commands until None or EOF."""
    from tests.provider_simulator import ProviderSimulator

    sims = [ProviderSimulator(f"sim-{i}") for i in range(count)]
    try:
        conn.send([s.base_url for s in sims])
        for _ in range(MAX_COMMANDS):
            command = conn.recv()
            if command is None:
                break
            index, delay = command
            sims[index].behaviour.delay_s = delay
            conn.send(sum(s.behaviour.calls for s in sims))
    except EOFError:
        pass
    finally:
        for sim in sims:
            sim.close()


class SimulatorHost:
    """The backends' process: their base URLs, their delay and their CPU time."""

    def __init__(self, process: mp.process.BaseProcess, conn: Connection, urls: list[str]) -> None:
        self.process = process
        self.conn = conn
        self.urls = urls
        self.base_delay_s = DELAY_S

    def set_delay(self, index: int, delay_s: float) -> None:
        self.conn.send((index, delay_s))
        self.conn.recv()

    def reset(self) -> None:
        for i in range(len(self.urls)):
            self.set_delay(i, self.base_delay_s)

    def cpu_seconds(self) -> float:
        return _proc_cpu_seconds(self.process.pid or 0)


@contextmanager
def simulator_host(count: int) -> Iterator[SimulatorHost]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_host_simulators, args=(count, child), daemon=True)
    process.start()
    try:
        if not parent.poll(60):
            raise RuntimeError("the provider simulators did not start within 60 s")
        host = SimulatorHost(process, parent, parent.recv())
        host.reset()
        yield host
    finally:
        with suppress(OSError):
            parent.send(None)
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)


def _proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), from /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- a private Valkey -------------------------------------------------------------------------------------------


@contextmanager
def private_valkey(console: Console = ERR) -> Iterator[str]:
    """A Valkey of this run's own (the launcher's redis_spec), in a temp dir, stopped and removed on exit."""
    from core.settings import Settings
    from orchestrion.launcher import services
    from orchestrion.launcher.ports import PortBook, _any_free_port
    from orchestrion.launcher.supervisor import launch

    root = Path(tempfile.mkdtemp(prefix="orch-bench-balancer-"))
    process = None
    try:
        (root / "ports.json").write_text(json.dumps({"redis": _any_free_port()}))  # keep off 6379
        spec = services.redis_spec(Settings(data_dir=root), PortBook(root))
        process = launch(spec, root / "logs", console)
        yield spec.urls["redis_url"]
    finally:
        if process is not None:
            process.stop()
        shutil.rmtree(root, ignore_errors=True)


# --- the client under test --------------------------------------------------------------------------------------


def build_client(redis_url: str, urls: Sequence[str], policy: Policy, seed: int) -> ModelClient:
    """A ModelClient as tests/routing/test_client.py assembles one, over the simulators, fresh prefix."""
    deployments = [
        Deployment(name=f"sim-{i}", tier="small", model=f"sim-{i}", base_url=url, timeout_s=10.0,
                   price_in_per_m=0.15, price_out_per_m=0.60)
        for i, url in enumerate(urls)
    ]  # fmt: skip
    fleet = Fleet(deployments=deployments, policy=policy, retries=1, backoff_base_s=0.01, fallback_to_next_tier=False)
    prefix = f"bench-bal-{policy}-{uuid.uuid4().hex[:8]}"
    redis_loop = LoopRedis(redis_url)
    state = FleetState(redis_loop, prefix, fleet.health)
    router = Router(fleet.rules, None, lambda texts: [[0.0] for _ in texts], fleet.tiers)
    return ModelClient(fleet, router, Balancer(state, policy, random.Random(seed)), Ledger(redis_loop, prefix),
                       ResponseCache(redis_loop, prefix, fleet.cache_ttl_s))  # fmt: skip


async def close_client(client: ModelClient) -> None:
    for http in list(client._http.values()):  # ModelClient has no aclose() of its own
        await http.aclose()
    await client.balancer.state.aclose()  # the Redis pool the ledger and cache share


# --- one phase --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    started: float
    latency_s: float
    deployment: str  # "" when the call failed


@dataclass
class Phase:
    policy: Policy
    degraded: bool
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    switch_at: float = 0.0
    lag_s: list[float] = field(default_factory=list)
    client_cpu_s: float = 0.0
    sim_cpu_s: float = 0.0

    @property
    def name(self) -> str:
        return f"{self.policy} {'degraded' if self.degraded else 'healthy'}"

    def latencies(self, second_half: bool = False) -> list[float]:
        return [s.latency_s for s in self.samples if s.deployment and (not second_half or s.started >= self.switch_at)]

    def slow_share(self) -> float:
        late = [s for s in self.samples if s.started >= self.switch_at and s.deployment]
        return sum(s.deployment == "sim-0" for s in late) / len(late) if late else float("nan")

    def slow_calls(self, window_s: float) -> str:
        """Second-half calls to sim-0: started within `window_s` of the slowdown (before any slow call could
        return, so before a latency measure could exist) + started later."""
        offsets = [s.started - self.switch_at for s in self.samples if s.started >= self.switch_at]
        on_slow = [t for t, s in zip(offsets, self.late(), strict=True) if s.deployment == "sim-0"]
        early = sum(t < window_s for t in on_slow)
        return f"{early} + {len(on_slow) - early}"

    def late(self) -> list[Sample]:
        return [s for s in self.samples if s.started >= self.switch_at]

    @property
    def errors(self) -> int:
        return sum(not s.deployment for s in self.samples)


async def _caller(client: ModelClient, index: int, deadline: float, out: list[Sample]) -> None:
    messages = [{"role": "user", "content": f"Name a primary colour (caller {index})."}]
    for _ in range(MAX_CALLS_PER_CLIENT):
        started = time.perf_counter()
        if started >= deadline:
            return
        try:
            done = await client.complete("bench", messages, hint="small", bypass_cache=True, max_tokens=16)
            out.append(Sample(started, time.perf_counter() - started, done.deployment))
        except OrchestrionError:
            out.append(Sample(started, time.perf_counter() - started, ""))


async def _lag_monitor(deadline: float, out: list[float]) -> None:
    """How late the event loop wakes a LAG_TICK_S sleep: time other work (sync Redis calls, CPU) held it."""
    for _ in range(int((deadline - time.perf_counter()) / LAG_TICK_S) + 1):
        before = time.perf_counter()
        if before >= deadline:
            return
        await asyncio.sleep(LAG_TICK_S)
        out.append(time.perf_counter() - before - LAG_TICK_S)


async def run_phase(client: ModelClient, host: SimulatorHost, phase: Phase, clients: int) -> None:
    await asyncio.to_thread(host.reset)
    cpu0, sim0 = time.process_time(), host.cpu_seconds()
    start = time.perf_counter()
    phase.switch_at = start + phase.seconds / 2
    deadline = start + phase.seconds
    tasks = [asyncio.create_task(_caller(client, i, deadline, phase.samples)) for i in range(clients)]
    tasks.append(asyncio.create_task(_lag_monitor(deadline, phase.lag_s)))
    try:
        await asyncio.sleep(max(0.0, phase.switch_at - time.perf_counter()))
        if phase.degraded:
            await asyncio.to_thread(host.set_delay, 0, host.base_delay_s * SLOWDOWN)
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    phase.client_cpu_s = time.process_time() - cpu0
    phase.sim_cpu_s = host.cpu_seconds() - sim0


async def run_all(
    redis_url: str,
    host: SimulatorHost,
    policies: Sequence[Policy],
    seconds: float,
    clients: int,
    warmup_s: float,
) -> list[Phase]:
    phases = [Phase(p, degraded, seconds) for p in policies for degraded in (False, True)]
    warm = build_client(redis_url, host.urls, "round_robin", 0)
    try:  # imports, connection pools, cold caches: not measured
        await run_phase(warm, host, Phase("round_robin", False, warmup_s), clients)
    finally:
        await close_client(warm)
    with progress() as bar:
        task = bar.add_task("phases", total=len(phases), detail="")
        for i, phase in enumerate(phases):
            bar.update(task, detail=f"{phase.name} ({seconds:.0f} s)")
            client = build_client(redis_url, host.urls, phase.policy, i + 1)
            try:
                await run_phase(client, host, phase, clients)
            finally:
                await close_client(client)
            bar.advance(task)
    return phases


# --- report -----------------------------------------------------------------------------------------------------


def ms(seconds: float) -> float:
    return seconds * 1000.0


def _latency_row(p: Phase, healthy_p99: float) -> list[object]:
    whole, late = p.latencies(), p.latencies(second_half=True)
    return [p.name, len(p.samples), p.errors, ms(percentile(whole, 50)), ms(percentile(whole, 99)),
            ms(percentile(late, 50)), ms(percentile(late, 99)), ms(healthy_p99),
            percentile(late, 99) / healthy_p99]  # fmt: skip


def _mechanics_row(p: Phase, slow_s: float) -> list[object]:
    calls = len(p.samples)
    return [p.name, calls / p.seconds, f"{p.slow_share() * 100:.1f}%", p.slow_calls(slow_s) if p.degraded else "-",
            ms(p.client_cpu_s / max(calls, 1)), f"{p.client_cpu_s / p.seconds * 100:.0f}%",
            ms(percentile(p.lag_s, 99))]  # fmt: skip


LATENCY = ["phase", "calls", "errors", "p50", "p99", "2nd-half p50", "2nd-half p99", "healthy p99", "ratio"]
MECHANICS = ["phase", "calls/s", "2nd half to sim-0", "sim-0 calls: learning + after", "client CPU ms/call",
             "client CPU", "loop lag p99 ms"]  # fmt: skip


def report(phases: list[Phase], clients: int, delay_s: float) -> None:
    healthy = {p.policy: p for p in phases if not p.degraded}
    healthy_p99 = {policy: percentile(p.latencies(), 99) for policy, p in healthy.items()}
    slow_s = delay_s * SLOWDOWN
    title = (f"Balancer, client-side latency in ms: {BACKENDS} simulated backends at {ms(delay_s):.0f} ms, "
             f"{clients} concurrent clients; degraded = sim-0 at {ms(slow_s):.0f} ms from mid-phase")  # fmt: skip
    OUT.print(table(title, LATENCY, [_latency_row(p, healthy_p99[p.policy]) for p in phases]))
    OUT.print(table("Balancer mechanics", MECHANICS, [_mechanics_row(p, slow_s) for p in phases]))
    sim_cpu = sum(p.sim_cpu_s for p in phases) / sum(p.seconds for p in phases)
    OUT.print(f"ratio = 2nd-half p99 / healthy p99 of the same policy. learning = 2nd-half calls to sim-0 started "
              f"in the first {ms(slow_s):.0f} ms after the slowdown, before any slow call could return. Simulator "
              f"process CPU: {sim_cpu * 100:.0f}% of one core on average.")  # fmt: skip
    saturated = {p.policy for p in healthy.values() if percentile(p.latencies(), 50) > SATURATED * delay_s}
    if saturated:
        OUT.print(f"WARN client saturated ({', '.join(sorted(saturated))}): healthy p50 > {SATURATED}x the "
                  f"{ms(delay_s):.0f} ms backend delay, so the client's own queueing sets latency and a ratio "
                  "says nothing about the balancer: INVALID, not PASS/MISS")  # fmt: skip
    for p in phases:
        if p.degraded:
            window = p.latencies(second_half=True)
            ratio = percentile(window, 99) / healthy_p99[p.policy]
            slow = sum(s.deployment == "sim-0" for s in p.late())
            detail = f"{len(window)} calls after the slowdown, {slow} of them on sim-0"
            # The window's size is judged on the healthy phase (what the configuration offers in that span), not
            # on the degraded one, whose count the policy itself lowers by parking callers on the slow backend.
            offered = len(healthy[p.policy].latencies(second_half=True))
            invalid = ("client saturated" if p.policy in saturated else
                       f"the healthy phase made {offered} < {MIN_WINDOW_CALLS} calls in the same span"
                       if offered < MIN_WINDOW_CALLS else "")  # fmt: skip
            OUT.print(_verdict(p.policy, ratio, f"{detail}; INVALID: {invalid}" if invalid else detail, bool(invalid)))


def _verdict(policy: Policy, ratio: float, detail: str, invalid: bool) -> str:
    name = f"balancer {policy} degraded p99"
    if policy not in TARGETED:
        return f"INFO {name}: ratio {ratio:.3f} (load-blind reference, no target; {detail})"
    line = verdict(name, ratio, f"<= {TARGET_RATIO}x healthy p99", ratio <= TARGET_RATIO, detail)
    return "INVALID" + line[4:] if invalid else line


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.balancer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SECONDS:.0f} s phases: a smoke run, INVALID")
    parser.add_argument("--seconds", type=float, default=None, help=f"seconds per phase (default {SECONDS:.0f})")
    parser.add_argument("--clients", type=int, default=CLIENTS, help=f"concurrent client tasks (default {CLIENTS})")
    parser.add_argument("--delay-ms", type=float, default=DELAY_S * 1000, help="backend base delay (default 250)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated subset of the policies")
    args = parser.parse_args()
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    policies = [p for p in POLICIES if p in args.policies.split(",")]
    OUT.print(f"[bold]bench.balancer[/bold] · {machine_note()}")
    OUT.print(f"{len(policies) * 2} phases x {seconds:.0f} s, {args.clients} clients, backend delay "
              f"{args.delay_ms:.0f} ms (slow: x{SLOWDOWN:.0f}), retries 1, bypass_cache")  # fmt: skip
    with private_valkey() as url, simulator_host(BACKENDS) as host:
        host.base_delay_s = args.delay_ms / 1000
        phases = asyncio.run(run_all(url, host, policies, seconds, args.clients, warmup_s=min(3.0, seconds / 2)))
    report(phases, args.clients, args.delay_ms / 1000)


if __name__ == "__main__":
    main()
