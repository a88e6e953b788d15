"""Shared pieces of the agent-API benchmarks (bench/api_wait.py, api_streams.py, api_fanout.py).

- A scripted model: a ProviderSimulator (tests/provider_simulator.py) in a child process, driven over a pipe,
  with a first-token delay, a gap between tokens and a gate (no first token until released). It records, per
  request, when it started and when it sent its first token (CLOCK_MONOTONIC, the same clock in every process
  of the host), keyed by a marker (`bench-q-<n>`) the benchmark puts in each question.
- An agent deployment on a private stack (bench/_stack.py): a fleet file pointing both tiers at the simulator,
  the fixed planner, admission limits raised, a tenant with one document ingested and its bearer token.
- A bare uvicorn app (same loop and HTTP parser as `orchestrion serve`: uvloop, httptools) with a JSON endpoint
  and an SSE endpoint: the baselines.
- Light HTTP/1.1 clients on asyncio streams (no HTTP library: the load generator must not be the bottleneck),
  run in several processes.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import re
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench._stack import BenchStack, Deployment

MARKER = re.compile(r"bench-q-[0-9]+")
BIG = "1000000"


# ---------------------------------------------------------------- the scripted model (child process)
def _simulator_main(conn: Connection) -> None:
    import uvicorn  # noqa: F401  (imported by the simulator; here so a failure shows in the child)
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse

    from tests.provider_simulator import ProviderSimulator, _completion

    class Scripted(ProviderSimulator):
        def __init__(self) -> None:
            self.token_gap_s = 0.0
            self.release_at = 0.0  # no first token before this (monotonic); inf = gated
            self.starts: dict[str, float] = {}
            self.firsts: dict[str, float] = {}
            super().__init__("sim")

        async def _chat(self, request: Request) -> Response:
            body: dict[str, Any] = await request.json()
            b = self.behaviour
            b.calls += 1
            started = time.monotonic()
            b.started.append(started)
            found = MARKER.findall(json.dumps(body))
            marker = found[-1] if found else f"call-{b.calls}"
            self.starts[marker] = started
            while time.monotonic() < max(started + b.delay_s, self.release_at):
                await asyncio.sleep(0.005)
            words = [f"w{i} " for i in range(b.tokens)]
            if not body.get("stream"):
                self.firsts.setdefault(marker, time.monotonic())
                return JSONResponse(_completion(self.name, "".join(words)))
            return StreamingResponse(self._spaced(words, marker), media_type="text/event-stream")

        async def _spaced(self, words: list[str], marker: str) -> Any:
            for i, word in enumerate(words):
                if i:
                    await asyncio.sleep(self.token_gap_s)
                chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": self.name,
                         "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}  # fmt: skip
                if i == 0:
                    self.firsts.setdefault(marker, time.monotonic())
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

    sim = Scripted()
    conn.send(sim.base_url)
    while True:
        try:
            command = conn.recv()
        except EOFError:
            break
        if command is None:
            break
        verb, arg = command
        if verb == "set":
            for key, value in arg.items():
                if hasattr(sim.behaviour, key):
                    setattr(sim.behaviour, key, value)
                else:
                    setattr(sim, key, value)
            conn.send(True)
        elif verb == "release":
            sim.release_at = time.monotonic()
            conn.send(sim.release_at)
        elif verb == "calls":
            conn.send(sim.behaviour.calls)
        elif verb == "times":
            conn.send((dict(sim.starts), dict(sim.firsts)))
    sim.close()


class Simulator:
    """The scripted model in a child process."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_simulator_main, args=(child,), daemon=True)
        self._process.start()
        self.base_url: str = self._conn.recv()

    def _ask(self, verb: str, arg: Any = None) -> Any:
        self._conn.send((verb, arg))
        return self._conn.recv()

    def set(self, **fields: Any) -> None:
        self._ask("set", fields)

    def gate(self) -> None:
        self.set(release_at=float("inf"))

    def release(self) -> float:
        return float(self._ask("release"))

    def calls(self) -> int:
        return int(self._ask("calls"))

    def times(self) -> tuple[dict[str, float], dict[str, float]]:
        starts, firsts = self._ask("times")
        return starts, firsts

    def close(self) -> None:
        with suppress(OSError):
            self._conn.send(None)
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()


# ---------------------------------------------------------------- the agent deployment
@dataclass
class AgentStack:
    deployment: Deployment
    tenant: str
    token: str
    host: str
    port: int

    @property
    def api_pid(self) -> int:
        assert self.deployment.api is not None
        return self.deployment.api.pid

    def events_key(self, run_id: str) -> str:
        return f"{self.deployment.prefix}:agents:events:{run_id}"


def agent_env(stack: BenchStack, sim_url: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    deployments = [
        {"name": f"sim-{tier}", "tier": tier, "model": "sim", "base_url": sim_url, "api_key_env": "BENCH_SIM_KEY",
         "max_concurrency": 100_000, "timeout_s": 600, "can_plan": False}
        for tier in ("small", "large")
    ]  # fmt: skip
    fleet = stack.root / "fleet.json"
    fleet.write_text(json.dumps({"deployments": deployments, "cache_ttl_s": 0, "retries": 0}))
    return {
        "BENCH_SIM_KEY": "bench",
        "ORCHESTRION_MODELS__FLEET_FILE": str(fleet),
        "ORCHESTRION_AGENTS__PLANNER": "fixed",
        "ORCHESTRION_RUNS__RUNS_QUEUE_LIMIT": BIG,
        "ORCHESTRION_RUNS__TENANT_INFLIGHT_LIMIT": BIG,
        "ORCHESTRION_RUNS__TENANT_RATE_PER_S": BIG,
        "ORCHESTRION_RUNS__TENANT_BURST": BIG,
        **(extra or {}),
    }


def deploy_agents(stack: BenchStack, sim_url: str, concurrency: int, extra: dict[str, str] | None = None) -> AgentStack:
    from orchestrion.knowledge import provision
    from tests.rag.helpers import GUIDE, ingest_text

    deployment = stack.deploy(workers=1, concurrency=concurrency, api=True, extra_env=agent_env(stack, sim_url, extra))
    rag = deployment.open_rag()
    tenant = "bench"
    provision(rag, tenant)
    ingest_text(rag, tenant, GUIDE, filename="guide.md")
    token = rag.registry.issue_token(tenant)
    host, port = deployment.api_url.removeprefix("http://").split(":")
    return AgentStack(deployment, tenant, token, host, int(port))


def question(n: int) -> str:
    return f"How do idempotency keys stop duplicate payments? bench-q-{n}"


def rss_bytes(pid: int, group: bool = True) -> int:
    """Resident memory of a process group (the process and its children), or of the process alone, from /proc."""
    if not group:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * resource.getpagesize()
    total = 0
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = status.read_text()
            fields = raw[raw.rindex(")") + 2 :].split()
            if int(fields[2]) == pid:
                total += int(fields[21]) * resource.getpagesize()
        except (OSError, ValueError):
            continue
    return total


# ---------------------------------------------------------------- the bare baseline app (child process)
def _bare_main(port: int, hold: Any, released_at: Any) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    async def answer(request: Request) -> Response:
        await request.body()
        return JSONResponse({"answer": "w0 w1 w2 w3 w4", "citations": []})

    released: list[asyncio.Event] = []
    watching: list[asyncio.Task[None]] = []

    async def watch() -> None:  # one poller of the cross-process event, however many streams wait on it
        while not hold.is_set():
            await asyncio.sleep(0.05)
        released_at.value = time.monotonic()  # the burst starts now: every held stream gets one event
        released[0].set()

    async def sse(request: Request) -> Response:
        if not released:
            released.append(asyncio.Event())
            watching.append(asyncio.get_running_loop().create_task(watch()))

        async def body() -> Any:
            yield b"event: metadata\ndata: {}\n\n"
            await released[0].wait()
            yield b"event: messages\ndata: []\n\n"
            yield b"event: end\ndata: {}\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")

    app = Starlette(routes=[Route("/wait", answer, methods=["POST"]), Route("/sse", sse)])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, loop="uvloop",
                http="httptools", backlog=16384)  # fmt: skip


@contextmanager
def bare_server() -> Iterator[tuple[int, Any, int, Any]]:
    """(port, the event that ends its SSE streams, pid, the server's CLOCK_MONOTONIC when it released them)."""
    from tests.conftest import free_port

    ctx = mp.get_context("spawn")
    port = free_port()
    hold, released_at = ctx.Event(), ctx.Value("d", 0.0)
    process = ctx.Process(target=_bare_main, args=(port, hold, released_at), daemon=True)
    process.start()
    deadline = time.monotonic() + 30
    while True:
        try:
            asyncio.run(_probe(port))
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        yield port, hold, process.pid or 0, released_at
    finally:
        hold.set()
        process.terminate()
        process.join(5)


async def _probe(port: int) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.close()


# ---------------------------------------------------------------- light HTTP/1.1 clients
def request_bytes(method: str, host: str, port: int, path: str, token: str, body: bytes | None = None) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and whole body (Content-Length or chunked) of one response on a keep-alive connection."""
    status_line = await reader.readuntil(b"\r\n")
    status = int(status_line.split()[1])
    length, chunked = -1, False
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        name, _, value = line.decode("latin-1").partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
    if not chunked:
        return status, await reader.readexactly(length) if length > 0 else b""
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


@dataclass
class StreamResult:
    """One SSE stream as a client saw it (times: monotonic and wall, of receipt)."""

    tag: str = ""
    status: int = 0
    error: str = ""
    ended: bool = False
    events: int = 0
    run_id: str = ""
    first_token_mono: float = 0.0
    sent_mono: float = 0.0
    lags_ms: list[tuple[int, float]] = field(default_factory=list)  # (entry id ms, receipt wall ms - it), when kept


async def follow_sse(
    host: str, port: int, request: bytes, connected: asyncio.Event | None = None, keep_lags: bool = False
) -> StreamResult:
    """Read one SSE response to its `end` event. `connected` is set on the first event (`metadata`)."""
    out = StreamResult()
    writer = None
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        out.sent_mono = time.monotonic()
        writer.write(request)
        status_line = await reader.readuntil(b"\r\n")
        out.status = int(status_line.split()[1])
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass
        if out.status != 200:
            out.error = f"HTTP {out.status}"
            return out
        await _read_events(reader, out, connected, keep_lags)
        return out
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
        out.error = f"{type(exc).__name__}: {exc}"[:200]
        return out
    finally:
        if writer is not None:
            writer.close()


async def _read_events(
    reader: asyncio.StreamReader, out: StreamResult, connected: asyncio.Event | None, keep_lags: bool
) -> None:
    entry_id = ""
    while True:
        line = await reader.readline()
        if not line:
            out.error = "closed before end"
            return
        if line.startswith(b"id: "):
            entry_id = line[4:].strip().decode()
        elif line.startswith(b"event: "):
            now_wall, now = time.time(), time.monotonic()
            name = line[7:].strip()
            out.events += 1
            if name == b"metadata" and connected is not None:
                connected.set()
            elif name == b"messages" and not out.first_token_mono:
                out.first_token_mono = now
            if keep_lags and entry_id:
                id_ms = int(entry_id.split("-")[0])
                out.lags_ms.append((id_ms, now_wall * 1000 - id_ms))
            if name == b"end":
                out.ended = True
                return
        elif line.startswith(b"data: ") and not out.run_id and b'"run_id"' in line:
            match = re.search(rb'"run_id":\s*"([^"]+)"', line)
            out.run_id = match.group(1).decode() if match else ""


def _streams_client(
    jobs: list[tuple[str, int, bytes, str]], ready: Any, results: Any, keep_lags: bool, open_rate: float
) -> None:
    """A client process: open every stream of `jobs` (paced), say how many are connected, read them to the end."""

    async def main() -> list[StreamResult]:
        events = [asyncio.Event() for _ in jobs]
        tasks = []
        for i, ((host, port, request, tag), event) in enumerate(zip(jobs, events, strict=True)):
            tasks.append(asyncio.create_task(_tagged(tag, follow_sse(host, port, request, event, keep_lags))))
            if open_rate and i % 50 == 49:
                await asyncio.sleep(50 / open_rate)
        # connected = every stream has its metadata event, or has ended (failed)
        while not all(e.is_set() or t.done() for e, t in zip(events, tasks, strict=True)):
            await asyncio.sleep(0.05)
        ready.put(sum(e.is_set() for e in events))
        return list(await asyncio.gather(*tasks))

    raise_nofile()
    streams = [r.__dict__ for r in asyncio.run(main())]
    results.put((streams, time.process_time()))


async def _tagged(tag: str, reading: Any) -> StreamResult:
    result: StreamResult = await reading
    result.tag = tag
    return result


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


@dataclass
class StreamFleet:
    """Client processes holding SSE streams."""

    processes: list[Any]
    ready: Any
    results: Any
    count: int
    cpu_s: float = 0.0  # CPU time the client processes used, once collected

    def wait_connected(self, timeout_s: float = 900.0) -> int:
        connected = 0
        for _ in self.processes:
            connected += int(self.ready.get(timeout=timeout_s))
        return connected

    def collect(self, timeout_s: float = 900.0) -> list[StreamResult]:
        out: list[StreamResult] = []
        for _ in self.processes:
            streams, cpu_s = self.results.get(timeout=timeout_s)
            out.extend(StreamResult(**r) for r in streams)
            self.cpu_s += cpu_s
        for p in self.processes:
            p.join(10)
        return out

    def kill(self) -> None:
        for p in self.processes:
            if p.is_alive():
                p.kill()


def open_streams(
    jobs: list[tuple[str, int, bytes, str]], processes: int, keep_lags: bool = False, open_rate: float = 2000.0
) -> StreamFleet:
    """Spread `jobs` over `processes` client processes; each opens its share at `open_rate`/processes per s."""
    ctx = mp.get_context("fork")
    ready, results = ctx.Queue(), ctx.Queue()
    shares = [jobs[i::processes] for i in range(processes)]
    procs = []
    for share in shares:
        if not share:
            continue
        p = ctx.Process(
            target=_streams_client, args=(share, ready, results, keep_lags, open_rate / processes), daemon=True
        )
        p.start()
        procs.append(p)
    return StreamFleet(procs, ready, results, len(jobs))


async def post_json(host: str, port: int, path: str, token: str, payload: Any) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request_bytes("POST", host, port, path, token, json.dumps(payload).encode()))
        status, body = await read_response(reader)
        return status, json.loads(body) if body.strip() else None
    finally:
        writer.close()


def pid_cpu_seconds(pid: int) -> float:
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RawReader:
    """A plain Redis client following run streams with XREAD BLOCK in a thread: the baseline of delivery."""

    def __init__(self, redis_url: str, keys: dict[str, str]) -> None:
        import threading

        import redis

        self._redis = redis.Redis.from_url(redis_url)
        self.keys = keys  # run id -> stream key
        self.entries: dict[str, list[tuple[str, str, float, float]]] = {r: [] for r in keys}  # id, event, wall, mono
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        cursors = {key: "0-0" for key in self.keys.values()}
        run_of = {key: run for run, key in self.keys.items()}
        while cursors:
            found: Any = self._redis.xread(cursors, block=1000, count=1000)  # type: ignore[arg-type]
            wall, mono = time.time(), time.monotonic()
            for key, entries in found or []:
                name = key.decode()
                for entry_id, fields in entries:
                    event = fields[b"e"].decode()
                    self.entries[run_of[name]].append((entry_id.decode(), event, wall, mono))
                    cursors[name] = entry_id.decode()
                    if event == "end":
                        cursors.pop(name, None)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
        self._redis.close()

    def first_token(self, run_id: str) -> float:
        return next((m for _, e, _, m in self.entries[run_id] if e == "messages"), float("nan"))

    def lags_ms(self, since_ms: float = 0.0) -> list[float]:
        """Receipt wall ms - entry id ms, of the entries appended at or after `since_ms`."""
        out = []
        for entries in self.entries.values():
            for entry_id, _, wall, _ in entries:
                id_ms = int(entry_id.split("-")[0])
                if id_ms >= since_ms:
                    out.append(wall * 1000 - id_ms)
        return out
