"""A real process that hosts the runner (the production composition root, `orchestrion.wiring.open_host`) with
a scripted planner and answerer, for the crash tests: they SIGKILL it mid-run and let another process resume.

    python -m tests.graphs.run_host ask SCRIPT.json QUESTION   # prints {"run_id": ...}, then runs it
    python -m tests.graphs.run_host recover SCRIPT.json RUN_ID  # resumes orphaned runs until RUN_ID ends
    python -m tests.graphs.run_host serve SCRIPT.json PORT      # `orchestrion serve`, its runs in this process

SCRIPT.json: {"plan": <plan>, "replan": <plan>, "answer": "...", "answer_delay_s": 0}, and optionally
"by_question": [[words, <plan>], ...]: the plan for a question containing those words, and "real": [purpose,
...]: the calls of those purposes (e.g. "answer") go to the real routed models instead. Everything else is real:
Valkey, the SQLite checkpointer file, the toolbox and its stdio servers, the Celery `tools` queue.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from core.settings import Settings, get_settings
from graphs.runner import Runner
from graphs.runs import FINAL
from observability.logs import configure_logging
from orchestrion.wiring import open_host
from tests.graphs.scripted import Script, scripted_factory
from workers.host import Host


def _script(path: str) -> Script:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    script = Script(delays={"answer": float(data.get("answer_delay_s", 0))})
    first, replan = data["plan"], data.get("replan", data["plan"])
    by_question: list[tuple[str, dict[str, Any]]] = data.get("by_question", [])

    def planner(messages: list[Any]) -> dict[str, Any]:  # whichever process asks: a replan gets `replan`
        if any("previous plan could not finish" in m.text for m in messages):
            return replan
        return next((plan for words, plan in by_question if any(words in m.text for m in messages)), first)

    return script.on("plan", planner).on("answer", data.get("answer", "Done [1]."))


def _scripted(runner: Runner, script_path: str) -> None:
    scripted, routed = scripted_factory(_script(script_path)), runner.deps.chat
    real: list[str] = json.loads(Path(script_path).read_text()).get("real", [])

    def chat(tenant: str, purpose: str, max_tokens: int) -> Any:  # `real` purposes: the routed, real models
        return (routed if purpose in real else scripted)(tenant, purpose, max_tokens)

    runner.deps.chat = chat
    runner.dispatch = None  # this process executes and resumes its runs itself (no worker has the scripted model)

    async def plans(_: str) -> bool:
        return True

    runner.deps.can_plan = plans


def serve(script_path: str, port: int) -> None:
    """The production HTTP server (api/app.py) whose runs execute here, on the scripted models."""
    import uvicorn

    from api.app import create_app

    @asynccontextmanager
    async def scripted_host(settings: Settings, role: str, **options: Any) -> AsyncIterator[Host]:
        async with open_host(settings, role, **options) as host:
            _scripted(host.require_runner(), script_path)
            yield host

    configure_logging("run-host-serve", "INFO", "console")
    uvicorn.run(create_app(get_settings(), scripted_host), host="127.0.0.1", port=port, log_config=None)


async def main(mode: str, script_path: str, target: str) -> None:
    settings = get_settings()
    configure_logging(f"run-host-{mode}", "INFO", "console")
    async with open_host(settings, "runner", recover_runs=False) as host, anyio.create_task_group() as group:
        runner = host.require_runner()
        _scripted(runner, script_path)
        await host.toolbox.ready()
        if mode == "recover":  # only once the scripted models are in place
            group.start_soon(runner.recover_forever)
        if mode == "ask":
            run = await runner.start("crash-tenant", target)
            print(json.dumps({"run_id": run.run_id}), flush=True)
            done = await runner.execute(run.run_id)
        else:
            while (done := await runner.store.run(target)).status not in FINAL:
                await anyio.sleep(0.2)
        print(
            json.dumps(
                {"status": done.status, "answer": done.answer, "executions": done.executions, "error": done.error}
            ),
            flush=True,
        )
        group.cancel_scope.cancel()  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
