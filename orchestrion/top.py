"""`orchestrion top`: scrape /metrics endpoints, keep a window of scrapes, draw observability/figures.py's tables.

The scrapes of one refresh are a round; a frame compares the newest round with the newest one at least
`window` seconds older (the oldest kept while the window fills). The first frame has nothing to compare
with and shows cumulative figures, which is all `--once` prints.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
from rich import box
from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from core.settings import Settings
from core.stack import StackRecord
from observability.figures import Figures, Scrape, combine, figures, increase, parse
from observability.figures import Table as FigureTable

LOOPBACK = "127.0.0.1"


def default_urls(settings: Settings) -> list[str]:
    """The embedded default: the API's and the worker's /metrics, where `up` recorded them, else settings."""
    record = StackRecord.read(settings.data_dir)
    urls = record.urls if record else {}
    host = LOOPBACK if settings.server.host in ("0.0.0.0", "::", "") else settings.server.host
    host = f"[{host}]" if ":" in host else host
    api = urls.get("api_url") or f"http://{host}:{settings.server.port}"
    worker = urls.get("worker_metrics_url") or f"http://{LOOPBACK}:{settings.celery.metrics_port}/metrics"
    return [f"{api.rstrip('/')}/metrics", worker]


@dataclass(frozen=True)
class Reading:
    url: str
    scrape: Scrape | None
    problem: str | None = None


def read(client: httpx.Client, url: str, clock: Callable[[], float] = time.monotonic) -> Reading:
    """One endpoint's scrape, or why there is none: never an exception, the frame says it instead."""
    try:
        answer = client.get(url)
    except httpx.HTTPError as exc:
        return Reading(url, None, f"unreachable ({type(exc).__name__}: {exc or 'no answer'})")
    if answer.status_code != 200:
        return Reading(url, None, f"answered HTTP {answer.status_code}")
    try:
        return Reading(url, parse(answer.text, clock()))
    except ValueError as exc:
        return Reading(url, None, f"not Prometheus text ({exc})")


class Window:
    """Rounds of readings; `frame` turns the newest into figures against the round `seconds` before it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._rounds: deque[tuple[float, dict[str, Scrape]]] = deque()

    def add(self, at: float, readings: Sequence[Reading]) -> Figures:
        now = {r.url: r.scrape for r in readings if r.scrape is not None}
        self._rounds.append((at, now))
        while len(self._rounds) > 2 and at - self._rounds[1][0] >= self.seconds:
            self._rounds.popleft()  # the next one is old enough to compare with
        totals = combine(increase(s, None) for s in now.values())
        if len(self._rounds) == 1:
            return figures(totals, None)
        then, before = self._rounds[0]
        # An endpoint seen for the first time adds its gauges but none of its history to the window.
        window = combine(increase(s, before.get(url, s)) for url, s in now.items())
        return figures(window, at - then, totals)


def _seconds(value: float) -> str:
    return f"{value * 1000:.1f} ms" if value < 0.01 else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


_FORMATS: dict[str, Callable[[float], Text]] = {
    "seconds": lambda v: Text(_seconds(v)),
    "rate": lambda v: Text(f"{v:.2f}"),
    "ratio": lambda v: Text(f"{v:.1%}", style="red" if v > 0 else ""),
    "usd": lambda v: Text(f"${v:.4f}"),
    "number": lambda v: Text(f"{v:.1f}"),
    "circuit": lambda v: Text("open", style="bold red") if v >= 1 else Text("closed", style="green"),
    "count": lambda v: Text(f"{v:,.0f}"),
}


def _format(kind: str, value: float | None) -> Text:
    return Text("—", style="dim") if value is None else _FORMATS[kind](value)


def _table(figure: FigureTable) -> Table:
    table = Table(title=figure.title, title_justify="left", box=box.SIMPLE_HEAD, show_header=bool(figure.key))
    table.add_column(figure.key, style="bold")
    for column in figure.columns:
        table.add_column(column.title, justify="right")
    for key, values in figure.rows or [("—", [None] * len(figure.columns))]:
        table.add_row(key, *(_format(c.kind, v) for c, v in zip(figure.columns, values, strict=True)))
    return table


def render(frame: Figures, readings: Sequence[Reading]) -> RenderableType:
    if frame.seconds is None:
        heading = Text("cumulative since each process started", style="bold")
    else:
        heading = Text(f"last {frame.seconds:.0f} s (rates per second over it)", style="bold")
    lines = [heading]
    for reading in readings:
        if reading.scrape is None:
            lines.append(Text.assemble(("✗ ", "red"), reading.url, " ", (reading.problem or "", "red")))
        else:
            lines.append(
                Text.assemble(("✓ ", "green"), reading.url, (f" {len(reading.scrape.samples)} samples", "dim"))
            )
    # The wide model table on its own, the others side by side as the width allows: a frame fits a screen.
    models, *others = [_table(t) for t in frame.tables]
    return Group(*lines, models, Columns(others, padding=(0, 2)))
