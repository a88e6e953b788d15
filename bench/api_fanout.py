"""One run joined by many clients (`GET /threads/{t}/runs/{r}/stream`): events delivered per second and lag.

A real `orchestrion serve` and `orchestrion worker` on a private Valkey + Weaviate; the model is the scripted
simulator (bench/_agent_api.py) streaming `--tokens` tokens `--gap` s apart, so the run appends one
`messages` entry per token to its Redis Stream. The run is started in the background and held at its model
call until `--clients` followers (spread over 4 client processes) have their `metadata` event; then the model
goes. A run's events are Redis Stream entries whose ids are the Redis server's clock in ms (same host), so
**lag** = a client's receipt time - the entry id's ms, for every event of every client.
**Baseline, same run**: a plain Redis reader (XREAD BLOCK in this process) of the same stream: its lag is
what Redis and the clock granularity (1 ms) cost; the API's is that plus the process's one reader
(api/agent/hub.py), the fan-out to followers and SSE over HTTP. Delivery ratio = events received by all clients
/ (events in the stream x clients): 1.0 when nobody missed anything.

Target: delivery ratio 1.0, 0 errors, p99 lag added over the raw reader < 100 ms.

    flock /tmp/orchestrion-bench.lock .venv/bin/python -m bench.api_fanout [--quick] [--clients 100]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from bench._agent_api import RawReader, Simulator, deploy_agents, open_streams, request_bytes, rss_bytes
from bench._report import ERR, OUT, machine_note, percentile, table, verdict
from bench._stack import add_env_option, bench_stack, env_from
from bench.api_streams import errors_of, start_runs


def measure(args: argparse.Namespace, tokens: int) -> dict[str, Any]:
    """Start the run, hold it at the model, connect the followers, release the model, read everything."""
    sim = Simulator()
    sim.set(delay_s=0.0, token_gap_s=args.gap, tokens=tokens)
    try:
        with bench_stack(keep=args.keep) as stack:
            ERR.print("starting the API and the worker…")
            agents = deploy_agents(stack, sim.base_url, 1, env_from(args))
            sim.set(tokens=3, token_gap_s=0.0)
            asyncio.run(start_runs(agents, 1, 9_999_999))  # warm-up
            time.sleep(3)
            sim.set(tokens=tokens, token_gap_s=args.gap)
            sim.gate()
            calls = sim.calls()
            [run] = asyncio.run(start_runs(agents, 1, 0))
            raw = RawReader(stack.urls["redis_url"], {run["run_id"]: agents.events_key(run["run_id"])})
            while sim.calls() <= calls:
                time.sleep(0.05)
            path = f"/threads/{run['thread_id']}/runs/{run['run_id']}/stream"
            job = (agents.host, agents.port, request_bytes("GET", agents.host, agents.port, path, agents.token), "")
            fleet = open_streams([job] * args.clients, args.processes, keep_lags=True)
            try:
                connected = fleet.wait_connected()
                rss = rss_bytes(agents.api_pid)
                ERR.print(f"{connected} followers connected; releasing the model ({tokens} tokens)")
                cpu0 = stack.cpu_by_role()
                released, released_ms = time.monotonic(), time.time() * 1000
                sim.release()
                results = fleet.collect()
                cpu1 = stack.cpu_by_role()
                cpu1["clients"] = fleet.cpu_s
            finally:
                fleet.kill()
            raw.join(60)
    finally:
        sim.close()
    return {
        "raw": raw,
        "run": run,
        "results": results,
        "rss": rss,
        "connected": connected,
        "released": released,
        "released_ms": released_ms,
        "api_cpu": cpu1["api"] - cpu0["api"],
        "worker_cpu": cpu1["workers"] - cpu0["workers"],
        "client_cpu": cpu1["clients"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.api_fanout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 tokens")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=0, help="tokens the model streams (default 1000; quick 100)")
    parser.add_argument("--gap", type=float, default=0.005, help="seconds between tokens")
    parser.add_argument("--processes", type=int, default=4, help="client processes")
    parser.add_argument("--keep", action="store_true")
    add_env_option(parser)
    args = parser.parse_args()
    tokens = args.tokens or (100 if args.quick else 1000)
    OUT.print(f"# bench.api_fanout · {machine_note()}")
    got = measure(args, tokens)
    raw, run, results, rss, connected = got["raw"], got["run"], got["results"], got["rss"], got["connected"]
    released, released_ms = got["released"], got["released_ms"]
    entries = raw.entries[run["run_id"]]
    in_stream = len(entries)
    after_release = [e for e in entries if e[3] >= released]
    last_raw = max(e[3] for e in entries)
    received = sum(r.events - 1 for r in results)  # minus each client's own `metadata` event
    # lag of what was appended after the release: the entries before it were history when the clients joined
    lags = [lag for r in results for id_ms, lag in r.lags_ms if id_ms >= released_ms]
    raw_lags = raw.lags_ms(released_ms)
    span = max(last_raw - released, 1e-9)
    ratio = received / max(1, in_stream * args.clients)
    errors = errors_of(results)
    rows = [
        [
            "raw Redis reader (1)",
            in_stream,
            in_stream / span,
            percentile(raw_lags, 50),
            percentile(raw_lags, 99),
            max(raw_lags),
        ],
        [
            f"API followers ({args.clients})",
            received,
            received / span,
            percentile(lags, 50),
            percentile(lags, 99),
            max(lags, default=float("nan")),
        ],
    ]
    OUT.print(
        table(
            f"One run, {tokens} tokens {args.gap * 1000:.0f} ms apart, followed by {args.clients} clients",
            ["reader", "events received", "events/s", "lag p50 ms", "lag p99 ms", "lag max ms"],
            rows,
        )
    )
    OUT.print(
        f"stream: {in_stream} entries ({len(after_release)} after the release) over {span:.2f} s; API CPU "
        f"{got['api_cpu']:.2f} s = {got['api_cpu'] / max(1, received) * 1e6:.0f} µs per event delivered; worker CPU "
        f"{got['worker_cpu']:.2f} s; client CPU ({args.processes} processes, whole life) "
        f"{got['client_cpu']:.2f} s; API RSS with the followers {rss / 2**20:.0f} MiB; "
        f"{connected} connected, {sum(r.ended for r in results)} ended, {len(errors)} errors {errors[:3]}"
    )
    added99 = percentile(lags, 99) - percentile(raw_lags, 99)
    met = ratio == 1.0 and not errors and added99 < 100
    OUT.print(
        verdict(
            f"bench.api_fanout {args.clients} followers",
            ratio,
            "1.0 delivered, 0 errors, p99 lag added < 100 ms",
            met,
            f"{received / span:,.0f} events/s delivered; lag p99 {percentile(lags, 99):.1f} ms vs raw "
            f"{percentile(raw_lags, 99):.1f} ms",
        )
    )


if __name__ == "__main__":
    main()
