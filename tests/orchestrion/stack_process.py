"""Run `orchestrion up` as a real process and find every process it owns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.stack import STACK_FILE


def light(weaviate: dict[str, str]) -> dict[str, str]:
    """Settings that reuse the session's Weaviate and name an (unused) model provider, leaving Valkey,
    the worker and the API to start: for tests about the launcher itself."""
    return {
        "WEAVIATE_URL": weaviate["weaviate_url"],
        "ORCHESTRION_WEAVIATE__GRPC_URL": weaviate["weaviate_grpc"],
        "OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }


def start_up(data_dir: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    full_env = {**os.environ, "ORCHESTRION_DATA_DIR": str(data_dir), **env}
    log = (data_dir.parent / f"{data_dir.name}-up.log").open("w")  # this run only
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrion", "up", *args],
        env=full_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(process: subprocess.Popen[str], data_dir: Path, timeout: float = 600.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"orchestrion up exited with {process.returncode}:\n{up_output(data_dir)}")
        if "Orchestrion is up" in up_output(data_dir):  # printed after the first-run work
            return dict(json.loads((data_dir / STACK_FILE).read_text()))
        time.sleep(0.5)
    raise AssertionError(f"stack not ready within {timeout}s:\n{up_output(data_dir)}")


def up_output(data_dir: Path) -> str:
    try:
        return (data_dir.parent / f"{data_dir.name}-up.log").read_text()
    except OSError:
        return ""


def owned_pids(data_dir: Path) -> set[int]:
    """Live processes of this data dir: the launcher and all it started. Most are known by the data dir in
    their environment; Valkey blanks its environment (to set its process title), so it is known by its
    working directory, <data dir>/redis."""
    marker = f"ORCHESTRION_DATA_DIR={data_dir}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue
        if state != "Z" and (marker in environ.split(b"\0") or cwd.is_relative_to(data_dir)):
            found.add(int(entry.name))
    return found


def stop(process: subprocess.Popen[str], sig: signal.Signals = signal.SIGTERM, timeout: float = 90.0) -> int:
    process.send_signal(sig)
    return process.wait(timeout)


def wait_gone(data_dir: Path, timeout: float = 30.0) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = owned_pids(data_dir)
        if not left:
            return left
        time.sleep(0.2)
    return owned_pids(data_dir)


@dataclass
class UpRun:
    """One data dir's `orchestrion up`, which several tests can look at in turn."""

    data_dir: Path
    process: subprocess.Popen[str] | None = None
    record: dict[str, Any] = field(default_factory=dict)
    first_output: str = ""  # what the first `up` on this data dir printed: the first-run work is only done then

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, *args: str) -> None:
        self.process = start_up(self.data_dir, *args)
        try:
            self.record = wait_ready(self.process, self.data_dir)
        except BaseException:
            self.process.kill()  # not ready: the next test to need a stack starts its own
            raise
        self.first_output = self.first_output or up_output(self.data_dir)

    @property
    def urls(self) -> dict[str, str]:
        return dict(self.record["urls"])

    @property
    def pids(self) -> set[int]:
        """The launcher and the services it started, as it recorded them."""
        return {int(self.record["launcher_pid"]), *(int(pid) for pid in self.record["pids"].values())}

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                stop(self.process)
            except subprocess.TimeoutExpired:
                self.process.kill()
