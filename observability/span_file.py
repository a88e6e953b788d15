"""Runs and their span trees read from the local span file (observability/tracing.py's JsonLinesSpanExporter).

The file is only appended to and can be large, so it is streamed: listing runs keeps one summary per run,
and a run's tree takes two passes (its trace ids, then that trace's spans), keeping only that trace. A span
is written when it ends, so children come before their parents and a run still going has no root yet.
A line being written while we read (or cut by a crash) is skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

RUN_ID = "run.id"
METADATA = "langfuse.observation.metadata."
ERROR = "ERROR"


def records(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("span_id"):
                yield record


def _attributes(record: dict[str, Any]) -> dict[str, Any]:
    found = record.get("attributes")
    return found if isinstance(found, dict) else {}


def metadata(record: dict[str, Any], key: str) -> Any:
    """A Langfuse metadata value (stored as JSON text in its own attribute), decoded."""
    raw = _attributes(record).get(METADATA + key)
    return _json(raw, otherwise=raw)


def duration_ns(record: dict[str, Any]) -> int:
    start, end = record.get("start_ns"), record.get("end_ns")
    return end - start if isinstance(start, int) and isinstance(end, int) else 0


def failed(record: dict[str, Any]) -> str | None:
    """The error a span recorded, or None."""
    attributes = _attributes(record)
    if record.get("status") == ERROR or attributes.get("langfuse.observation.level") == ERROR:
        return str(attributes.get("langfuse.observation.status_message") or "error")
    return None


@dataclass
class RunSummary:
    """One run: every execution of it (a resume after an approval or a crash is one more)."""

    run_id: str
    trace_id: str
    thread_id: str | None
    tenant: str | None
    status: str | None
    started_ns: int
    duration_ns: int
    executions: int
    tiers: set[str] = field(default_factory=set)


def _status(record: dict[str, Any]) -> str | None:
    status = _attributes(record).get("run.status") or metadata(record, "status")
    return str(status) if status else None


def recent_runs(path: Path, limit: int) -> list[RunSummary]:
    """Newest first by the start of a run's first execution; its status is its latest execution's."""
    runs: dict[str, RunSummary] = {}
    latest: dict[str, int] = {}
    for record in records(path):
        run_id = _attributes(record).get(RUN_ID)
        if not isinstance(run_id, str):
            continue
        start = record.get("start_ns")
        start = start if isinstance(start, int) else 0  # another exporter's file may hold anything
        tiers = metadata(record, "tiers")
        run = runs.get(run_id)
        if run is None:
            run = runs[run_id] = RunSummary(
                run_id, str(record.get("trace_id")), _attributes(record).get("thread.id"), metadata(record, "tenant"),
                None, start, 0, 0,
            )  # fmt: skip
        run.executions += 1
        run.duration_ns += duration_ns(record)
        run.started_ns = min(run.started_ns, start)
        if isinstance(tiers, list):
            run.tiers.update(t for t in tiers if isinstance(t, str))
        if start >= latest.get(run_id, 0):
            latest[run_id] = start
            run.status = _status(record)
    return sorted(runs.values(), key=lambda r: r.started_ns, reverse=True)[:limit]


@dataclass
class SpanNode:
    record: dict[str, Any]
    children: list[SpanNode] = field(default_factory=list)
    orphan: bool = False  # its parent is not in the file (another machine's spans, or not written yet)

    @property
    def name(self) -> str:
        return str(self.record.get("name"))

    @property
    def start_ns(self) -> int:
        start = self.record.get("start_ns")
        return start if isinstance(start, int) else 0


@dataclass
class RunTrace:
    run_id: str
    trace_ids: list[str]
    roots: list[SpanNode]
    start_ns: int
    executions: int


def run_trace(path: Path, run_id: str) -> RunTrace | None:
    """Every span of the trace(s) `run_id` ran in, nested by parent; None when no execution of it is in the file."""
    trace_ids: list[str] = []
    executions = 0
    for record in records(path):
        if _attributes(record).get(RUN_ID) == run_id:
            executions += 1
            trace_id = record.get("trace_id")
            if isinstance(trace_id, str) and trace_id not in trace_ids:
                trace_ids.append(trace_id)
    nodes = {r["span_id"]: SpanNode(r) for r in records(path)
             if r.get("trace_id") in trace_ids and isinstance(r.get("span_id"), str)}  # fmt: skip
    if not nodes:
        return None
    roots: list[SpanNode] = []
    for node in nodes.values():
        parent = nodes.get(node.record.get("parent_id") or "")
        if parent is None:
            node.orphan = bool(node.record.get("parent_id"))
            roots.append(node)
        else:
            parent.children.append(node)
    for node in nodes.values():
        node.children.sort(key=lambda n: n.start_ns)
    roots.sort(key=lambda n: n.start_ns)
    start = min(n.start_ns for n in nodes.values())
    return RunTrace(run_id, trace_ids, roots, start, executions)


def highlights(record: dict[str, Any]) -> list[str]:
    """The attributes worth a glance on a tree line: the run, the model call, the tool, the retrieval."""
    attributes = _attributes(record)
    shown: list[str] = []
    if attributes.get(RUN_ID):
        shown.append(f"run {attributes[RUN_ID]}")
        shown += [f"{k} {v}" for k in ("tenant", "execution") if (v := metadata(record, k)) is not None]
        if status := _status(record):
            shown.append(status)
    if model := attributes.get("langfuse.observation.model.name"):
        shown.append(f"model {model}")
    if deployment := metadata(record, "deployment"):
        shown.append(f"deployment {deployment}")
    usage = _json(attributes.get("langfuse.observation.usage_details"))
    if isinstance(usage, dict) and ("input" in usage or "output" in usage):
        shown.append(f"tokens {usage.get('input', 0)} in / {usage.get('output', 0)} out")
    cost = _json(attributes.get("langfuse.observation.cost_details"))
    if isinstance(cost, dict) and isinstance(cost.get("total"), int | float):
        shown.append(f"${cost['total']:.6f}")
    if (ttft := _ttft_ms(record)) is not None:
        shown.append(f"TTFT {ttft:.0f} ms")
    if server := metadata(record, "server"):
        shown.append(f"server {server}")
    shown += [f"{k.removeprefix('rag.')} {attributes[k]}" for k in ("rag.mode", "rag.k", "rag.hits") if k in attributes]
    return shown


def _json(value: Any, otherwise: Any = None) -> Any:
    """JSON text decoded (`otherwise` when it is not JSON); anything else as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return otherwise


def _ttft_ms(record: dict[str, Any]) -> float | None:
    """The first token's time after the call began (the SDK records the completion start as a timestamp)."""
    stamp = _json(_attributes(record).get("langfuse.observation.completion_start_time"))
    if not isinstance(stamp, str) or not isinstance(record.get("start_ns"), int):
        return None
    try:
        first = datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
    return float(first - record["start_ns"] / 1e9) * 1000
