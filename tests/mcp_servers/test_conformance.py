"""The official MCP conformance suite against the conformance profile (`orchestrion mcp conformance --http`):
Orchestrion's real servers plus the suite's `test_*` fixtures, on the session's real services."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrion.launcher import services
from orchestrion.launcher.supervisor import launch
from tests.conftest import CONSOLE, free_port
from tests.node_tools import node22

ACTIVE_SCENARIOS = 30  # conformance 0.1.16's active server suite


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def profile(stack_env: dict[str, str], local_llm: str, services_dir: Path) -> Iterator[str]:
    port = free_port()
    spec = services.ServiceSpec(
        name="mcp-conformance",
        argv=[sys.executable, "-m", "orchestrion", "mcp", "conformance", "--http", "--port", str(port)],
        env={**stack_env, "ORCHESTRION_MODELS__LOCAL_LLM_URL": local_llm},
        healthy=lambda: _listening(port),  # uvicorn binds once the lifespan (the Host) is open
        start_timeout_s=120.0,
    )
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield f"http://127.0.0.1:{port}/mcp"
    process.stop()


def _suite(url: str, *args: str, output_dir: Path | None = None) -> str:
    root, env = node22()
    cli = root / "node_modules" / ".bin" / "conformance"
    saved = ["--output-dir", str(output_dir)] if output_dir else []
    done = subprocess.run(["node", str(cli), "server", "--url", url, *args, *saved], env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    return done.stdout + done.stderr


def _failed_checks(output_dir: Path) -> list[str]:
    """What each failed check said: the summary names only the scenario."""
    return [
        f"{check['id']}: {check.get('errorMessage')}"
        for checks in output_dir.glob("*/checks.json")
        for check in json.loads(checks.read_text())
        if check["status"] == "FAILURE"
    ]


def test_every_active_scenario_passes(profile: str, tmp_path: Path) -> None:
    out = _suite(profile, output_dir=tmp_path)
    summary = out[out.index("=== SUMMARY ===") :]
    results = re.findall(r"([✓✗]) ([\w-]+): (\d+) passed, (\d+) failed", summary)
    failed = [name for mark, name, _, failures in results if mark == "✗" or failures != "0"]
    assert not failed, f"{summary}\n" + "\n".join(_failed_checks(tmp_path))
    assert len(results) == ACTIVE_SCENARIOS, summary
    assert re.search(r"Total: \d+ passed, 0 failed", summary), summary


def test_pending_json_schema_2020_12_scenario_passes(profile: str) -> None:
    out = _suite(profile, "--scenario", "json-schema-2020-12")
    assert "Passed: 4/4, 0 failed" in out, out
