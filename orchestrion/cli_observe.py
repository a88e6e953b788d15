"""CLI commands to look at a running system: `top` (live metrics), `runs` and `trace` (the local span file)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from core.errors import InvalidInputError, NotFoundError
from core.settings import Settings
from orchestrion.cli import _clear_errors, _settings, app

if TYPE_CHECKING:
    from rich.tree import Tree

    from observability.span_file import RunTrace, SpanNode

out = Console()


@app.command()
@_clear_errors
def top(
    url: Annotated[
        list[str] | None,
        typer.Option(
            "--url", help="A /metrics endpoint, repeatable (default: the API's and the worker's of this data dir)."
        ),
    ] = None,
    once: Annotated[bool, typer.Option("--once", help="Print one frame of cumulative figures and exit.")] = False,
    interval: Annotated[float, typer.Option(min=0.1, help="Seconds between scrapes.")] = 2.0,
    window: Annotated[float, typer.Option(min=0.1, help="Seconds that rates and quantiles are taken over.")] = 60.0,
) -> None:
    """A live view of the metrics: model TTFT and latency, HTTP routes, 429s, queues, runs, cost, deployments."""
    import httpx
    from rich.live import Live

    from orchestrion.top import Window, default_urls, read, render

    urls = url or default_urls(_settings())
    history = Window(window)
    with httpx.Client(timeout=min(interval, 5.0)) as client:

        def frame() -> tuple[object, bool]:
            readings = [read(client, u) for u in urls]
            figures = history.add(time.monotonic(), readings)
            return render(figures, readings), any(r.scrape for r in readings)

        if once:
            shown, answered = frame()
            out.print(shown)
            if not answered:
                raise typer.Exit(1)
            return
        with Live(frame()[0], console=out, screen=True, auto_refresh=False) as live:  # type: ignore[arg-type]
            try:
                while True:
                    time.sleep(interval)
                    live.update(frame()[0], refresh=True)  # type: ignore[arg-type]
            except KeyboardInterrupt:
                return


def _trace_file(settings: Settings) -> Path:
    """The span file, saying where traces are when they are not (only) here."""
    lf = settings.langfuse
    path = lf.trace_file or settings.data_dir / "traces" / "spans.jsonl"
    if lf.enabled:
        out.print(f"Langfuse is configured: traces are in Langfuse at {lf.base_url}", style="yellow")
    elif lf.otlp_endpoint:
        out.print(f"traces are exported to OTLP at {lf.otlp_endpoint}", style="yellow")
    if not path.is_file():
        raise NotFoundError(
            f"no trace file at {path}: spans are written there when neither Langfuse keys nor an OTLP endpoint "
            "are set (ORCHESTRION_LANGFUSE__TRACE_FILE names another file)"
        )
    if lf.enabled or lf.otlp_endpoint:
        out.print(f"reading the local trace file {path} (runs traced before that)", style="yellow")
    return path


def _ms(ns: int) -> str:
    ms = ns / 1e6
    return f"{ms:.1f} ms" if ms < 10 else f"{ms:,.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


@app.command()
@_clear_errors
def runs(limit: Annotated[int, typer.Option(min=1, help="How many runs.")] = 20) -> None:
    """List recent runs from the local trace file, newest first."""
    from rich.table import Table

    from observability.span_file import recent_runs

    found = recent_runs(_trace_file(_settings()), limit)
    if not found:
        out.print("no runs in the trace file yet: ask something (`orchestrion ask`) and look again")
        return
    table = Table("run", "started", "status", "duration", "executions", "tenant", "thread", "tiers")
    for run in found:
        started = datetime.fromtimestamp(run.started_ns / 1e9, UTC).strftime("%Y-%m-%d %H:%M:%S")
        style = "red" if run.status == "error" else ""
        table.add_row(
            run.run_id, started, run.status or "running", _ms(run.duration_ns), str(run.executions),
            run.tenant or "", run.thread_id or "", ",".join(sorted(run.tiers)), style=style,
        )  # fmt: skip
    out.print(table)


@app.command()
@_clear_errors
def trace(run_id: str) -> None:
    """Print a run's span tree from the local trace file: durations, start offsets, errors, models, tokens."""
    from observability.span_file import run_trace

    if not run_id.strip():
        raise InvalidInputError("give a run id (`orchestrion runs` lists them)")
    found = run_trace(_trace_file(_settings()), run_id)
    if found is None:
        raise NotFoundError(f"no run {run_id!r} in the trace file (`orchestrion runs` lists the recent ones)")
    out.print(render_trace(found))


def render_trace(found: RunTrace) -> Tree:
    from rich.tree import Tree

    ids = ", ".join(found.trace_ids)
    root = Tree(f"run {found.run_id} · {found.executions} execution(s) · trace {ids}", guide_style="dim")
    for node in found.roots:
        _add(root, node, found.start_ns)
    return root


def _add(parent: Tree, node: SpanNode, start_ns: int) -> None:
    from rich.text import Text

    from observability.span_file import duration_ns, failed, highlights

    error = failed(node.record)
    label = Text.assemble(
        (node.name, "bold red" if error else "bold"),
        f"  {_ms(duration_ns(node.record))}",
        (f"  +{_ms(node.start_ns - start_ns)}", "dim"),
        (f"  {node.record.get('service') or ''}", "dim"),
    )
    if node.orphan:
        label.append("  (parent not in the file)", "yellow")
    for shown in highlights(node.record):
        label.append(f"  {shown}", "cyan")
    if error:
        label.append(f"  ✗ {error}", "red")
    branch = parent.add(label)
    for child in node.children:
        _add(branch, child, start_ns)
