"""Small shared pieces of the benchmarks: statistics, tables, progress bars and the verdict line."""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

OUT = Console(width=160)  # tables (Markdown-style, paste into RESULTS.md) and the summary: stdout
ERR = Console(stderr=True)  # progress: stderr


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear interpolation between closest ranks; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    low, high = math.floor(pos), math.ceil(pos)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def progress() -> Progress:
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
    )
    return Progress(*columns, console=ERR, transient=True)


def table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> Table:
    out = Table(title=title, title_justify="left", box=box.MARKDOWN)
    for i, header in enumerate(headers):
        out.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        out.add_row(*(_cell(v) for v in row))
    return out


def _cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def machine_note() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    return (
        f"{time.strftime('%Y-%m-%d %H:%M')} · {platform.node()} · {os.cpu_count()} cores (shared) · "
        f"load avg {load:.1f} at start · Python {platform.python_version()}"
    )


def verdict(name: str, ratio: float, target: str, met: bool, detail: str = "") -> str:
    """The final one-line summary every benchmark prints."""
    word = "PASS" if met else "MISS"
    extra = f" ({detail})" if detail else ""
    return f"{word} {name}: ratio {ratio:.3f}, target {target}{extra}"
