"""Run `orchestrion up` as a real process and find every process it owns."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
    """Live processes whose environment names this data dir: the launcher and all it started."""
    marker = f"ORCHESTRION_DATA_DIR={data_dir}".encode()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker in environ.split(b"\0"):
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
