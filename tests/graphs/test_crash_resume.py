"""A run whose process is SIGKILLed mid-step or mid-long-tool resumes elsewhere from its last checkpoint and
finishes, with every tool call taking effect once. Real processes (the production composition root with a
scripted planner and answerer), real Valkey, one SQLite checkpoint file, a real Celery worker, a real stdio
MCP server that marks each call in a file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import WorkerHandle, start_worker
from tests.graphs.harness import answer, plan, tool

EFFECT_SERVER = Path(__file__).with_name("effect_server.py")


@pytest.fixture
def long_running() -> list[str]:
    return []


@pytest.fixture
def crash_env(stack_env: dict[str, str], local_llm: str, tmp_path: Path, long_running: list[str]) -> dict[str, str]:
    effects = tmp_path / "effects.log"
    effects.touch()
    servers = tmp_path / "mcp-servers.json"
    servers.write_text(json.dumps({"mcpServers": {"effects": {
        "command": sys.executable, "args": [str(EFFECT_SERVER)], "env": {"EFFECTS_FILE": str(effects)},
        "long_running": long_running,
    }}}))  # fmt: skip
    return {
        **stack_env,
        "ORCHESTRION_DATA_DIR": str(tmp_path / "data"),
        "ORCHESTRION_REDIS__KEY_PREFIX": f"{stack_env['ORCHESTRION_REDIS__KEY_PREFIX']}-{tmp_path.name[-6:]}",
        "ORCHESTRION_AGENTS__SERVERS_FILE": str(servers),
        "ORCHESTRION_MODELS__LOCAL_LLM_URL": local_llm,
        "ORCHESTRION_AGENTS__RUN_LEASE_S": "3",
        "ORCHESTRION_AGENTS__RECOVERY_INTERVAL_S": "1",
        "EFFECTS_FILE": str(effects),
    }


@pytest.fixture
def tools_worker(crash_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerHandle]:
    """A worker that sees the servers file (its long calls run through its own toolbox). It does not look for
    orphaned runs here: the test's second process, with the scripted models, is the one to resume."""
    env = {**crash_env, "ORCHESTRION_AGENTS__RECOVERY_INTERVAL_S": "3600"}
    process, handle = start_worker(env, tmp_path / "logs", concurrency=1)
    yield handle
    process.stop()


def _host(env: dict[str, str], mode: str, script: Path, target: str, log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "tests.graphs.run_host", mode, str(script), target], env=env,
                            stdout=subprocess.PIPE, stderr=log.open("a"), text=True)  # fmt: skip


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _effects(env: dict[str, str]) -> list[str]:
    return Path(env["EFFECTS_FILE"]).read_text().splitlines()


def _crash_and_resume(
    env: dict[str, str], tmp_path: Path, script: dict[str, Any], kill_when: Any, settle_s: float = 0.0
) -> dict[str, Any]:
    path = tmp_path / "script.json"
    path.write_text(json.dumps(script))
    log = tmp_path / "hosts.log"
    first = _host(env, "ask", path, "Do the thing", log)
    assert first.stdout is not None
    run_id = json.loads(first.stdout.readline())["run_id"]
    _wait(lambda: kill_when(_effects(env)), 180, "the moment to kill")
    time.sleep(settle_s)
    os.kill(first.pid, signal.SIGKILL)
    first.wait(10)
    second = _host(env, "recover", path, run_id, log)
    out, _ = second.communicate(timeout=240)
    assert second.returncode == 0, log.read_text()[-3000:]
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("long_running", [["slow_effect"]])
def test_killed_mid_long_tool_the_resumed_run_attaches_to_the_same_call(
    crash_env: dict[str, str], tools_worker: WorkerHandle, tmp_path: Path
) -> None:
    # The long tool runs on the worker while the run's process is killed; the resumed run must not send it again.
    long_plan = plan(tool("s1", "slow_effect", {"label": "long", "seconds": 6}), answer("s2", "s1"))

    done = _crash_and_resume(crash_env, tmp_path, {"plan": long_plan, "answer": "Recorded [1]."},
                             kill_when=lambda lines: any(x.startswith("start long") for x in lines))  # fmt: skip

    assert done["status"] == "success", done
    assert done["executions"] == 2  # started, killed, resumed
    effects = _effects(crash_env)
    assert [x.split()[0] for x in effects] == ["start", "done"], effects  # one call, not two
    assert done["answer"].startswith("Recorded [1].")


def test_killed_mid_step_the_resumed_run_does_not_repeat_finished_tool_calls(
    crash_env: dict[str, str], tmp_path: Path
) -> None:
    # A short tool with an effect runs in the run's own process; then the answer step is killed mid-way.
    short_plan = plan(tool("s1", "slow_effect", {"label": "short", "seconds": 0}), answer("s2", "s1"))
    script = {"plan": short_plan, "answer": "Recorded once [1].", "answer_delay_s": 8}

    # Killed 2 s into the 8 s answer: the tool step's result is checkpointed by then.
    done = _crash_and_resume(crash_env, tmp_path, script, settle_s=2.0,
                             kill_when=lambda lines: any(x.startswith("done short") for x in lines))  # fmt: skip

    assert done["status"] == "success", done
    assert done["executions"] == 2
    assert [x.split()[:2] for x in _effects(crash_env)] == [["start", "short"], ["done", "short"]]
    assert done["answer"].startswith("Recorded once [1].")


def test_killed_mid_short_call_the_resumed_run_fails_that_step_instead_of_calling_again(
    crash_env: dict[str, str], tmp_path: Path
) -> None:
    # A short call with an effect, in the run's own process, is cut by the kill: whether it took effect is
    # unknown, so the resumed run must not make it again; the planner is told, and answers without it.
    short_plan = plan(tool("s1", "slow_effect", {"label": "cut", "seconds": 6}), answer("s2", "s1"))
    script = {"plan": short_plan, "replan": plan(answer("r1")), "answer": "Not recorded [1]."}

    done = _crash_and_resume(
        crash_env, tmp_path, script, kill_when=lambda lines: any(x.startswith("start cut") for x in lines)
    )

    assert done["status"] == "success", done
    assert [x.split()[:2] for x in _effects(crash_env)][:1] == [["start", "cut"]]
    assert sum(x.startswith("start") for x in _effects(crash_env)) == 1  # never called a second time
