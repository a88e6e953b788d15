"""`POST /runs/wait` through the real API and worker with a zero-latency model, beside a bare uvicorn endpoint.

A real `orchestrion serve` and a real `orchestrion worker` (`--concurrency` prefork processes, default 2, the
product default) on a private Valkey + Weaviate; a fleet file points both tiers at the scripted simulator
(bench/_agent_api.py) with no delay and a 5-token reply; the fixed planner (retrieve, then answer). Each
request is a stateless run the worker executes in full: admission, run and thread records, the Celery task,
the graph (a search through the in-process MCP retrieval server: the query embedded with the local model and a
Weaviate hybrid query over one ingested document; the answer from the simulator), checkpoints, the events
stream, the API's wait on it. Every question is distinct (no cache answers).

**Baseline, same run**: a bare uvicorn app (Starlette; the same uvloop + httptools) answering
`POST /wait` with a small JSON body, on the same host. **Load**: `--processes` client processes, each with
`--connections` keep-alive HTTP/1.1 connections on asyncio streams (no HTTP library, so the generator costs
~tens of µs per request), a closed loop for `--seconds` per phase; bare and API phases interleaved in
`--rounds` rounds. Reported: requests/s, p50/p99 latency, errors, and the ratio API / bare.
No throughput target (the issue sets none): the verdict is 0 errors; the ratio is what the whole path costs.

    flock /tmp/orchestrion-bench.lock .venv/bin/python -m bench.api_wait [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import time
from typing import Any

from bench._agent_api import Simulator, bare_server, deploy_agents, pid_cpu_seconds, read_response, request_bytes
from bench._report import ERR, OUT, machine_note, percentile, progress, table, verdict
from bench._stack import add_env_option, bench_stack, env_from

IN_PROCESS = "in-process"
KINDS = ("bare", "api", IN_PROCESS)


def _load_client(target: dict[str, Any], connections: int, seconds: float, seed: int, out: Any) -> None:
    async def one_connection(k: int, stop_at: float) -> tuple[list[float], list[str]]:
        host, port = target["host"], target["port"]
        latencies: list[float] = []
        errors: list[str] = []
        reader, writer = await asyncio.open_connection(host, port)
        n = 0
        try:
            while time.monotonic() < stop_at:
                n += 1
                text = f"How do idempotency keys stop duplicate payments? bench-q-{seed}-{k}-{n}"
                body = json.dumps({"assistant_id": "orchestration", "input": {"question": text}}).encode()
                started = time.monotonic()
                writer.write(request_bytes("POST", host, port, target["path"], target["token"], body))
                try:
                    status, answer = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError) as exc:
                    errors.append(type(exc).__name__)
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.monotonic() - started)
                if status != 200 or b'"answer"' not in answer:
                    errors.append(f"{status} {answer[:120]!r}")
        finally:
            writer.close()
        return latencies, errors

    async def main() -> tuple[list[float], list[str]]:
        stop_at = time.monotonic() + seconds
        done = await asyncio.gather(*(one_connection(k, stop_at) for k in range(connections)))
        return [x for lat, _ in done for x in lat], [e for _, err in done for e in err]

    out.put(asyncio.run(main()))


def _in_process_client(env: dict[str, str], tenant: str, connections: int, seconds: float, seed: int, out: Any) -> None:
    """The same graph, services and model, run by `Runner.ask` in this process: no HTTP, no queue, no worker."""
    import os

    os.environ.update(env)
    from core.settings import Settings
    from orchestrion.wiring import open_host

    async def main() -> tuple[list[float], list[str], float, float]:
        async with open_host(Settings(), "bench-in-process", recover_runs=False) as host:
            runner = host.runner
            assert runner is not None
            await runner.ask(tenant, f"warm-up {seed}")

            async def one(k: int, stop_at: float) -> tuple[list[float], list[str]]:
                latencies: list[float] = []
                errors: list[str] = []
                n = 0
                while time.monotonic() < stop_at:
                    n += 1
                    started = time.monotonic()
                    text = f"How do idempotency keys stop duplicate payments? in-q-{seed}-{k}-{n}"
                    run = await runner.ask(tenant, text)
                    latencies.append(time.monotonic() - started)
                    if run.status != "success":
                        errors.append(f"{run.status} {run.error}")
                return latencies, errors

            began, cpu = time.monotonic(), time.process_time()
            done = await asyncio.gather(*(one(k, began + seconds) for k in range(connections)))
            wall, cpu = time.monotonic() - began, time.process_time() - cpu
        return [x for lat, _ in done for x in lat], [e for _, err in done for e in err], wall, cpu

    out.put(asyncio.run(main()))


def phase_in_process(
    env: dict[str, str], tenant: str, processes: int, connections: int, seconds: float, seed: int
) -> dict[str, Any]:
    """`processes` host processes (as many as the worker has), each `connections` runs at a time."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_in_process_client, args=(env, tenant, connections, seconds, seed * 100 + i, out))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors: list[str] = []
    wall = cpu = 0.0
    for _ in procs:
        lat, err, took, used = out.get(timeout=seconds + 300)
        latencies, errors, wall, cpu = latencies + lat, errors + err, max(wall, took), cpu + used
    for p in procs:
        p.join(30)
    return {"latencies": latencies, "errors": errors, "wall": wall, "cpu": cpu}


def phase(target: dict[str, Any], processes: int, connections: int, seconds: float, seed: int) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_load_client, args=(target, connections, seconds, seed * 100 + i, out), daemon=True)
        for i in range(processes)
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    latencies: list[float] = []
    errors: list[str] = []
    for _ in procs:
        lat, err = out.get(timeout=seconds + 300)
        latencies += lat
        errors += err
    wall = time.monotonic() - started
    for p in procs:
        p.join(10)
    return {"latencies": latencies, "errors": errors, "wall": wall}


def measured_phase(
    stack: Any, agents: Any, targets: dict[str, Any], bare_pid: int, kind: str, level: tuple[int, int],
    args: argparse.Namespace, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """One phase, with the server CPU it cost: the API path's processes, the bare app's, or the in-process
    hosts' own plus Valkey's and Weaviate's."""
    procs, conns = level
    cpu0, bare0 = stack.cpu_by_role(), pid_cpu_seconds(bare_pid)
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    if kind == IN_PROCESS:
        hosts = min(args.concurrency, procs * conns)
        got = phase_in_process(agents.deployment.env, agents.tenant, hosts, procs * conns // hosts, seconds, seed)
    else:
        got = phase(targets[kind], procs, conns, seconds, seed)
    cpu1 = stack.cpu_by_role()
    got["roles"] = roles = {k: cpu1[k] - cpu0[k] for k in ("api", "workers", "redis", "weaviate")}
    if kind == "api":
        got["cpu"] = sum(roles.values())
    elif kind == IN_PROCESS:
        got["cpu"] += roles["redis"] + roles["weaviate"]
    else:
        got["cpu"] = pid_cpu_seconds(bare_pid) - bare0
    return got


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_wait", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 rounds of 5 s")
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (`orchestrion worker`)")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--connections", type=int, default=8, help="connections per client process")
    parser.add_argument("--seconds", type=float, default=0.0, help="per phase (default 15; quick 5)")
    parser.add_argument("--rounds", type=int, default=0, help="bare/API rounds (default 3; quick 2)")
    parser.add_argument("--keep", action="store_true")
    add_env_option(parser)
    args = parser.parse_args()
    seconds = args.seconds or (5.0 if args.quick else 15.0)
    rounds = args.rounds or (2 if args.quick else 3)
    OUT.print(f"# bench.api_wait · {machine_note()}")
    sim = Simulator()
    sim.set(delay_s=0.0, tokens=5)
    levels = [(1, 1), (args.processes, args.connections)]
    kinds: dict[tuple[int, str], dict[str, Any]] = {
        (lvl, kind): {"latencies": [], "errors": [], "wall": 0.0, "cpu": 0.0, "roles": {}}
        for lvl in range(len(levels))
        for kind in KINDS
    }
    try:
        with bench_stack(keep=args.keep) as stack, bare_server() as (bare_port, _, bare_pid, _released):
            ERR.print("starting the API and the worker…")
            agents = deploy_agents(stack, sim.base_url, args.concurrency, env_from(args))
            targets = {
                "bare": {"host": "127.0.0.1", "port": bare_port, "path": "/wait", "token": "-"},
                "api": {"host": agents.host, "port": agents.port, "path": "/runs/wait", "token": agents.token},
            }
            phase(targets["api"], 1, 2, 3.0, 99)  # warm-up: the first runs' imports, connections, model load
            with progress() as bar:
                task = bar.add_task("bare / API / in-process phases", total=rounds * 3 * len(levels), detail="")
                for r in range(rounds):
                    for lvl, (procs, conns) in enumerate(levels):
                        for kind in KINDS:
                            seed = r * 10 + lvl * 3 + KINDS.index(kind)
                            got = measured_phase(stack, agents, targets, bare_pid, kind, (procs, conns), args, seed)
                            acc = kinds[(lvl, kind)]
                            for key in ("latencies", "errors", "wall", "cpu"):
                                acc[key] += got[key]
                            for k, v in got["roles"].items():
                                acc["roles"][k] = acc["roles"].get(k, 0.0) + v
                            rate = len(got["latencies"]) / got["wall"]
                            bar.update(task, advance=1, detail=f"{kind} x{procs * conns}: {rate:,.0f} req/s")
            calls = sim.calls()
    finally:
        sim.close()
    report(kinds, levels, rounds, seconds, args.concurrency, calls)


def report(
    kinds: dict[tuple[int, str], dict[str, Any]],
    levels: list[tuple[int, int]],
    rounds: int,
    seconds: float,
    concurrency: int,
    calls: int,
) -> None:
    ms = 1000.0
    rows, ratios = [], []
    for lvl, (procs, conns) in enumerate(levels):
        pair = []
        for kind in KINDS:
            acc = kinds[(lvl, kind)]
            lat = acc["latencies"]
            pair.append(
                [
                    f"{kind} x{procs * conns}",
                    len(lat),
                    len(acc["errors"]),
                    len(lat) / acc["wall"],
                    percentile(lat, 50) * ms,
                    percentile(lat, 99) * ms,
                    acc["cpu"] / max(1, len(lat)) * ms,
                ]
            )
        rows += pair
        ratios.append(
            [
                f"{procs * conns} connections",
                pair[1][3] / pair[0][3],
                pair[1][4] / pair[0][4],
                pair[1][5] / pair[0][5],
                pair[1][4] - pair[0][4],
                pair[1][3] / pair[2][3],
                pair[1][4] / pair[2][4],
                pair[1][4] - pair[2][4],
            ]
        )
    OUT.print(
        table(
            f"POST /runs/wait vs a bare uvicorn JSON endpoint and the same runs in process, {rounds} x {seconds:.0f} s "
            "per kind and level, "
            f"worker concurrency {concurrency}",
            ["kind x connections", "requests", "errors", "req/s", "p50 ms", "p99 ms", "server CPU ms / req"],
            rows,
        )
    )
    OUT.print(
        table(
            "API / bare and API / in-process (same run)",
            [
                "level",
                "req/s vs bare",
                "p50 vs bare",
                "p99 vs bare",
                "p50 added ms",
                "req/s vs in-process",
                "p50 vs in-process",
                "p50 added over in-process ms",
            ],
            ratios,
        )
    )
    loaded = kinds[(len(levels) - 1, "api")]
    n = max(1, len(loaded["latencies"]))
    OUT.print(
        table(
            "API path: server CPU ms per request by process (loaded level)",
            ["process", "CPU ms / req"],
            [[k, v / n * ms] for k, v in loaded["roles"].items()],
        )
    )
    OUT.print(
        f"Model calls answered by the simulator: {calls}. Server CPU for the API counts the API, worker, "
        "Valkey and Weaviate processes; for bare, its one process; in-process, its host processes (as many as "
        "the worker's pool), Valkey and Weaviate. Clients run on the same 2 cores."
    )
    errors = [e for acc in kinds.values() for e in acc["errors"]]
    if errors:
        OUT.print(f"errors (first 5): {errors[:5]}")
    api, bare, inproc = rows[-2], rows[-3], rows[-1]
    OUT.print(
        verdict(
            "bench.api_wait req/s API/bare",
            ratios[-1][1],
            "0 errors (no throughput target)",
            not errors,
            f"API {api[3]:.1f} req/s p50 {api[4]:.0f} ms p99 {api[5]:.0f} ms at {levels[-1][0] * levels[-1][1]} "
            f"connections, {rows[1][4]:.0f} ms p50 alone; bare {bare[3]:,.0f} req/s; the same runs in process "
            f"{inproc[3]:.1f} req/s p50 {inproc[4]:.0f} ms (API / in-process req/s {ratios[-1][5]:.3f})",
        )
    )


if __name__ == "__main__":
    main()
