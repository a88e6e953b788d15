"""A real process that hosts the runner (the production composition root, `orchestrion.wiring.open_host`) with
a scripted planner and answerer, for the crash tests: they SIGKILL it mid-run and let another process resume.

    python -m tests.graphs.run_host ask SCRIPT.json QUESTION   # prints {"run_id": ...}, then runs it
    python -m tests.graphs.run_host recover SCRIPT.json RUN_ID  # resumes orphaned runs until RUN_ID ends

SCRIPT.json: {"plan": <plan>, "replan": <plan>, "answer": "...", "answer_delay_s": 0}. Everything else is real:
Valkey, the SQLite checkpointer file, the toolbox and its stdio servers, the Celery `tools` queue.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio

from core.settings import get_settings
from graphs.runs import FINAL
from observability.logs import configure_logging
from orchestrion.wiring import open_host
from tests.graphs.scripted import Script, scripted_factory


def _script(path: str) -> Script:
    data: dict[str, Any] = json.loads(Path(path).read_text())
    script = Script(delays={"answer": float(data.get("answer_delay_s", 0))})
    first, replan = data["plan"], data.get("replan", data["plan"])

    def planner(messages: list[Any]) -> dict[str, Any]:  # whichever process asks: a replan gets `replan`
        return replan if any("previous plan could not finish" in m.text for m in messages) else first

    return script.on("plan", planner).on("answer", data.get("answer", "Done [1]."))


async def main(mode: str, script_path: str, target: str) -> None:
    settings = get_settings()
    configure_logging(f"run-host-{mode}", "INFO", "console")
    async with open_host(settings, "runner", recover_runs=False) as host, anyio.create_task_group() as group:
        runner = host.require_runner()
        runner.deps.chat = scripted_factory(_script(script_path))
        runner.dispatch = None  # this process resumes the orphaned run itself (no worker has the scripted model)

        async def plans(_: str) -> bool:
            return True

        runner.deps.can_plan = plans
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
    anyio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
