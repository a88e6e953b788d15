"""`orchestrion up`: start what settings do not point elsewhere, watch it, stop it cleanly."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO

from rich.console import Console
from rich.table import Table

from core.errors import ServiceStartError
from core.settings import Settings
from core.stack import StackRecord
from orchestrion.launcher import services
from orchestrion.launcher.ports import PortBook
from orchestrion.launcher.process import ManagedProcess

LOCK_FILE = "up.lock"


class StackAlreadyRunningError(ServiceStartError):
    pass


class _Shutdown(BaseException):
    """Raised from the SIGTERM/SIGINT handler so every wait unwinds into the clean stop."""


# Set by the handler as well as raised: a Ctrl-C that lands while a client library is
# busy can have its exception swallowed there (seen during the first-run demo on a
# restart: the launcher went on to wait forever), and the watch loop must still stop.
_stop_requested = threading.Event()


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    _stop_requested.set()
    raise _Shutdown(signal.Signals(signum).name)


@contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    data_dir.mkdir(parents=True, exist_ok=True)
    handle: IO[str] = (data_dir / LOCK_FILE).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        running = StackRecord.read(data_dir)
        where = f" (launcher pid {running.launcher_pid}, API {running.urls.get('api_url', '?')})" if running else ""
        raise StackAlreadyRunningError(
            f"Orchestrion is already running for data dir {data_dir}{where}: use that stack, stop it with Ctrl-C "
            "in its terminal, or start another with a different ORCHESTRION_DATA_DIR"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


@contextmanager
def _startup_turn(cache_dir: Path, console: Console) -> Iterator[None]:
    """One `up` at a time chooses ports and starts services on this machine.

    A port is only taken once its service binds it, so two stacks starting at once
    could both pick the same free port; taking turns closes that window.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "startup.lock").open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with console.status("waiting for another `orchestrion up` on this machine to finish starting…"):
                fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Stack:
    def __init__(self, settings: Settings, console: Console) -> None:
        self.settings = settings
        self.console = console
        self.processes: list[ManagedProcess] = []
        self.urls: dict[str, str] = {}
        self.summaries: list[tuple[str, str]] = []
        self.token = ""

    def run(self, *, exit_when_ready: bool = False, samples: bool = True) -> None:
        """Bring everything up, then wait for Ctrl-C or SIGTERM (or return at once with `exit_when_ready`)."""
        data_dir = self.settings.data_dir
        _stop_requested.clear()
        previous = signal.signal(signal.SIGTERM, _raise_shutdown)
        signal.signal(signal.SIGINT, _raise_shutdown)
        try:
            with _exclusive(data_dir):
                try:
                    with _startup_turn(self.settings.cache_dir, self.console):
                        self._start_all()
                    pids = {p.name: p.pid for p in self.processes}
                    StackRecord(os.getpid(), str(data_dir), self.urls, pids).write(data_dir)
                    from orchestrion.demo import first_run

                    self.token = first_run(self.settings, self.urls["api_url"], self.console, samples=samples)
                    if _stop_requested.is_set():
                        raise _Shutdown("stop requested during the first run")
                    self._print_summary()
                    if not exit_when_ready:
                        self._watch()
                except (KeyboardInterrupt, _Shutdown):
                    self.console.print("\n[bold]stopping…[/bold]")
                finally:
                    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the stop short
                    signal.signal(signal.SIGTERM, signal.SIG_IGN)
                    StackRecord.remove(data_dir)
                    self._stop_all()
        finally:
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _start_all(self) -> None:
        s = self.settings
        ports = PortBook(s.data_dir)
        external = {"redis_url": s.redis.url, "weaviate_url": s.weaviate.url, "llm_base_url": s.models.local_llm_url}
        self.urls.update({k: v for k, v in external.items() if v})
        if s.weaviate.grpc_url:
            self.urls["weaviate_grpc"] = s.weaviate.grpc_url
        for name, url in external.items():
            if url:
                self.summaries.append((name.split("_")[0], f"external {url}"))
        if not s.models.local_llm_url and s.models.provider_configured:
            self.summaries.append(("llm", f"provider {s.models.openai_base_url or 'from API keys'}"))
        # Redis, Weaviate and the model servers need nothing of each other: they start together, then
        # the worker and the API, which need their URLs.
        first, llms = [], []
        if not s.redis.url:
            first.append(services.redis_spec(s, ports))
        if not s.weaviate.url:
            first.append(services.weaviate_spec(s, ports, self.console))
        if not s.models.local_llm_url and not s.models.provider_configured:
            replicas = s.models.local_replicas
            threads = max(1, (os.cpu_count() or 1) // replicas)
            llms = [
                services.llm_spec(s, ports, self.console, replica=replica, threads=threads)
                for replica in range(1, replicas + 1)
            ]
        self._launch(first + llms)
        if llms:
            bases = [spec.urls["llm_base_url"] for spec in llms]
            self.urls["llm_base_url"], self.urls["llm_base_urls"] = bases[0], ",".join(bases)
        self._launch([self._worker(ports), services.api_spec(s, ports, self.urls)])
        ports.save()

    def _worker(self, ports: PortBook) -> services.ServiceSpec:
        from workers.app import create_celery_app, worker_answers

        # One name per data dir: two stacks on one machine are two distinct workers.
        tag = hashlib.sha256(str(self.settings.data_dir).encode()).hexdigest()[:8]
        hostname = f"orchestrion-{tag}@{os.uname().nodename}"
        app = create_celery_app(self.settings, self.urls["redis_url"])
        return services.worker_spec(self.settings, ports, self.urls, lambda: worker_answers(app, hostname), hostname)

    def _launch(self, specs: list[services.ServiceSpec]) -> None:
        self.processes += launch_together(specs, self.settings.data_dir / "logs", self.console)
        for spec in specs:
            self.urls.update(spec.urls)
            self.summaries.append((spec.name, spec.summary))

    def _watch(self) -> None:
        self.console.print("[dim]Ctrl-C stops everything.[/dim]")
        while not _stop_requested.is_set():
            for process in self.processes:
                code = process.exit_code()
                if code is not None:
                    raise ServiceStartError(
                        f"{process.name} stopped unexpectedly (exit {code}); stopping the stack. Its log "
                        f"{process.log_path} ends with:\n{process.log_tail()}"
                    )
            time.sleep(0.5)
        raise _Shutdown("stop requested")

    def _stop_all(self) -> None:
        for process in reversed(self.processes):
            if process.running():
                self.console.print(f"  stopping {process.name}")
            process.stop()
        if self.processes:
            self.console.print("[bold]stopped.[/bold]")

    def _print_summary(self) -> None:
        table = Table(title="Orchestrion is up", show_header=False, title_justify="left")
        for name, text in self.summaries:
            table.add_row(name, text)
        self.console.print(table)
        self.console.print(
            f"data dir {self.settings.data_dir} · service URLs in {self.settings.data_dir / 'stack.json'}"
        )
        self.console.print(f"IDE / MCP over HTTP: {self.urls['mcp_url']}  (Authorization: Bearer {self.token})")
        self.console.print(
            f"  tenant {self.settings.tenants.default!r}; token kept in {self.settings.data_dir / 'local-token'}"
        )
        self.console.print("Claude Desktop (claude_desktop_config.json), MCP over stdio:")
        self.console.print_json(json.dumps(claude_desktop_snippet(self.settings)))


def launch(spec: services.ServiceSpec, log_dir: Path, console: Console) -> ManagedProcess:
    """Start `spec` and wait until its health check passes; on failure it is stopped and its log shown."""
    return launch_together([spec], log_dir, console)[0]


def launch_together(specs: Sequence[services.ServiceSpec], log_dir: Path, console: Console) -> list[ManagedProcess]:
    """Start every spec at once and wait until all are healthy: their start-ups overlap (most of a start is
    waiting). If one fails or times out, all of them are stopped and the failing one's log is shown."""
    processes = [ManagedProcess(spec.name, spec.argv, spec.env, log_dir / f"{spec.name}.log") for spec in specs]
    started = time.monotonic()
    waiting = list(zip(specs, processes, strict=True))
    try:
        for process in processes:
            process.start()
        with console.status("starting…") as status:
            while waiting:
                for spec, process in list(waiting):
                    if spec.healthy():
                        console.print(f"[green]✓[/green] {spec.name} healthy ({time.monotonic() - started:.1f}s)")
                        waiting.remove((spec, process))
                    else:
                        _raise_if_failed(spec, process, time.monotonic() - started)
                if waiting:
                    names = ", ".join(spec.name for spec, _ in waiting)
                    status.update(f"starting {names}… [dim]{time.monotonic() - started:.0f}s[/dim]")
                    time.sleep(0.25)
    except BaseException:
        for process in reversed(processes):
            process.stop()
        raise
    return processes


def _raise_if_failed(spec: services.ServiceSpec, process: ManagedProcess, waited: float) -> None:
    code = process.exit_code()
    if code is not None:
        raise ServiceStartError(
            f"{spec.name} exited with code {code} while starting; its log {process.log_path} ends with:\n"
            f"{process.log_tail()}"
        )
    if waited > spec.start_timeout_s:
        raise ServiceStartError(
            f"{spec.name} did not become healthy within {spec.start_timeout_s:.0f}s; its log "
            f"{process.log_path} ends with:\n{process.log_tail()}"
        )


def claude_desktop_snippet(settings: Settings) -> dict[str, object]:
    import sys

    command = Path(sys.executable).with_name("orchestrion")
    return {
        "mcpServers": {
            "orchestrion": {
                "command": str(command),
                "args": ["mcp"],
                "env": {"ORCHESTRION_DATA_DIR": str(settings.data_dir)},
            }
        }
    }
