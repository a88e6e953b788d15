"""MCP load clients in their own processes, driven round by round by bench.retrieval.

Each process is a separate MCP client program, as 16 or 64 concurrent MCP clients would be in a
deployment (IDEs and agents on other machines). Run as one event loop in the benchmark's own
process, every client's answer was parsed and validated (~6 ms of CPU each) on that one loop,
so answers arriving together queued behind each other there: a cost of the harness, not of the
server, added to the MCP path only. Spreading the clients over a few processes removes that
queue; the CPU they use is still counted as the benchmark's (client) CPU.

Protocol (JSON lines; parent = the benchmark, child = `python -m bench._mcp_clients URL`):
  parent -> {"slots": [[token, [query, ...]], ...], "tool": name}
                                                      open one session per slot; each query is a call of
                                                      `search_documents` or the no-op `ping` (its message)
  child  -> {"open": true}                            every session is open
  parent -> {"go": true}                              send the queries, in order, per session
  child  -> {"latencies": [...], "errors": n, "empty": n, "cpu_s": s}
  child  -> {"error": "..."}                          instead, when a session fails
An empty line or end of input stops the child.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import IO, Any

from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

SEARCH_ARGS: dict[str, Any] = {"mode": "hybrid", "k": 5, "alpha": 0.5}
SEARCH, NOOP = "search_documents", "ping"


def _call(tool: str, query: str) -> tuple[str, dict[str, Any]]:
    return (tool, {"query": query, **SEARCH_ARGS}) if tool == SEARCH else (tool, {"message": query})


@dataclass
class RoundGates:
    """Sessions open, then wait for `go`; `all_done` when every session has sent its queries."""

    clients: int
    opened: int = 0
    finished: int = 0
    all_open: asyncio.Event = field(default_factory=asyncio.Event)
    go: asyncio.Event = field(default_factory=asyncio.Event)
    all_done: asyncio.Event = field(default_factory=asyncio.Event)

    def open_one(self) -> None:
        self.opened += 1
        if self.opened == self.clients:
            self.all_open.set()

    def finish_one(self) -> None:
        self.finished += 1
        if self.finished == self.clients:
            self.all_done.set()

    def fail(self) -> None:
        for event in (self.all_open, self.go, self.all_done):
            event.set()


@dataclass
class RoundOutcome:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    empty: int = 0


async def _session(
    url: str, token: str, tool: str, queries: list[str], gates: RoundGates, outcome: RoundOutcome
) -> None:
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            create_mcp_http_client(headers=headers) as http_client,  # ours to close: the SDK leaves it open
            Client(streamable_http_client(url, http_client=http_client), read_timeout_seconds=60) as session,
        ):
            await session.list_tools()  # what clients do on connecting; the SDK needs it to validate results
            gates.open_one()
            await gates.go.wait()
            for query in queries:
                started = time.perf_counter()
                answer = await session.call_tool(*_call(tool, query))
                elapsed = time.perf_counter() - started
                if answer.is_error:
                    outcome.errors += 1
                    continue
                outcome.latencies.append(elapsed)
                outcome.empty += tool == SEARCH and not (answer.structured_content or {}).get("hits")
            gates.finish_one()
    except BaseException:
        gates.fail()
        raise


async def _round(url: str, tool: str, slots: list[tuple[str, list[str]]], stdin: IO[str], stdout: IO[str]) -> None:
    gates, outcome = RoundGates(len(slots)), RoundOutcome()
    sessions = [asyncio.create_task(_session(url, token, tool, queries, gates, outcome)) for token, queries in slots]
    try:
        await gates.all_open.wait()
        _send(stdout, {"open": True})
        # A blocked read in a thread: the loop stays free for the sessions' keep-alive traffic.
        if not json.loads(await asyncio.to_thread(stdin.readline) or "{}").get("go"):
            raise RuntimeError("expected go")
        cpu_started = time.process_time()
        gates.go.set()
        await gates.all_done.wait()
        cpu_s = time.process_time() - cpu_started
    finally:
        outcomes = await asyncio.gather(*sessions, return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    if failed:
        raise failed[0]
    _send(stdout, {"latencies": outcome.latencies, "errors": outcome.errors, "empty": outcome.empty, "cpu_s": cpu_s})


def _send(stdout: IO[str], message: dict[str, Any]) -> None:
    stdout.write(json.dumps(message) + "\n")
    stdout.flush()


def child_main(url: str) -> None:
    import gc

    gc.freeze()  # see core/heap.py: no full-GC stall inside a timed round
    while line := sys.stdin.readline().strip():
        message = json.loads(line)
        slots = [(token, list(queries)) for token, queries in message["slots"]]
        try:
            asyncio.run(_round(url, message.get("tool", SEARCH), slots, sys.stdin, sys.stdout))
        except Exception:  # noqa: BLE001 - reported to the parent, which stops the run
            _send(sys.stdout, {"error": traceback.format_exc(limit=5)})
            return


@dataclass
class ClientRound:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    empty: int = 0
    cpu_s: float = 0.0


class McpClientProcesses:
    """`processes` child processes; a round's sessions are dealt out among them."""

    def __init__(self, url: str, processes: int) -> None:
        self._children = [
            subprocess.Popen(
                [sys.executable, "-m", "bench._mcp_clients", url],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for _ in range(processes)
        ]

    def open_round(self, slots: list[tuple[str, list[str]]], tool: str = SEARCH) -> list[subprocess.Popen[str]]:
        """Hand the slots out and wait until every session is open; returns the children in the round."""
        shares = [slots[i :: len(self._children)] for i in range(len(self._children))]
        busy = [(child, share) for child, share in zip(self._children, shares, strict=True) if share]
        for child, share in busy:
            self._write(child, {"slots": share, "tool": tool})
        for child, _ in busy:
            self._read(child, "open")
        return [child for child, _ in busy]

    def go(self, children: list[subprocess.Popen[str]]) -> None:
        for child in children:
            self._write(child, {"go": True})

    def finish_round(self, children: list[subprocess.Popen[str]]) -> ClientRound:
        total = ClientRound()
        for child in children:
            done = self._read(child, "latencies")
            total.latencies += done["latencies"]
            total.errors += done["errors"]
            total.empty += done["empty"]
            total.cpu_s += done["cpu_s"]
        return total

    def close(self) -> None:
        for child in self._children:
            if child.stdin is not None:
                child.stdin.close()
        for child in self._children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
            if child.stdout is not None:
                child.stdout.close()

    @staticmethod
    def _write(child: subprocess.Popen[str], message: dict[str, Any]) -> None:
        assert child.stdin is not None
        child.stdin.write(json.dumps(message) + "\n")
        child.stdin.flush()

    @staticmethod
    def _read(child: subprocess.Popen[str], expected: str) -> dict[str, Any]:
        assert child.stdout is not None
        line = child.stdout.readline()
        if not line:
            raise RuntimeError(f"MCP client process {child.pid} exited (code {child.poll()})")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            raise RuntimeError(f"MCP client process {child.pid} failed:\n{message['error']}")
        if expected not in message:
            raise RuntimeError(f"MCP client process {child.pid}: expected {expected!r}, got {message}")
        return message


if __name__ == "__main__":
    child_main(sys.argv[1])
