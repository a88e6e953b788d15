"""Long first-time steps show what they are doing, on a terminal and in a CI log alike."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from rich.console import Console

from core.errors import ServiceStartError

_CI_HEARTBEAT_S = 30.0


def run_with_progress(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    title: str,
    log_path: Path,
    console: Console,
    timeout_s: float,
    failure: str,
) -> None:
    """Run a long command, its output to `log_path`, its last line and elapsed time on screen.

    On failure raise `ServiceStartError` with `failure` (the fix) and the output's tail.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    last_line = ["starting"]
    # Popen as a context manager closes the output pipe: left open, it is reported as an unclosed file
    # (ResourceWarning) where the caller goes on, in artifacts.py.
    with (
        log_path.open("w") as log,
        subprocess.Popen(
            list(argv), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as proc,
    ):
        assert proc.stdout is not None

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                if line.strip():
                    last_line[0] = line.strip()[:100]

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        next_heartbeat = started + _CI_HEARTBEAT_S
        try:
            with console.status(title) as status:
                while proc.poll() is None:
                    elapsed = time.monotonic() - started
                    if elapsed > timeout_s:
                        proc.kill()
                        raise ServiceStartError(f"{title} took over {timeout_s:.0f}s and was stopped. {failure}")
                    status.update(f"{title} [dim]{elapsed:.0f}s · {last_line[0]}[/dim]")
                    if not console.is_terminal and time.monotonic() >= next_heartbeat:
                        console.print(f"  … {title}: {elapsed:.0f}s, {last_line[0]}")
                        next_heartbeat += _CI_HEARTBEAT_S
                    time.sleep(0.5)
        except BaseException:
            if proc.poll() is None:
                proc.kill()
            raise
        reader.join(timeout=5)
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-12:])
        raise ServiceStartError(
            f"{title} failed (exit {proc.returncode}). {failure}\n--- {log_path} (tail) ---\n{tail}"
        )
    console.print(f"[green]✓[/green] {title} ({time.monotonic() - started:.0f}s)")
