"""What a process that serves Orchestrion holds, opened once by its composition root (`orchestrion/wiring.py`)
and closed together: the operations' services, the queue producer, and (when a model fleet is configured)
the agent runner with its toolbox and checkpointer. The API server, the MCP servers and each worker process
get one; nothing below builds its own."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from core.errors import OrchestrionError
from core.settings import Settings
from graphs.runner import Runner
from graphs.runs import RunStore
from operations.services import Services
from tools.long_calls import LongCalls
from tools.toolbox import Toolbox
from workers.client import QueueClient


@dataclass
class Host:
    settings: Settings
    services: Services
    queue: QueueClient
    toolbox: Toolbox
    store: RunStore
    runner: Runner | None = None
    long_calls: LongCalls | None = None
    runs_error: str = ""

    def require_runner(self) -> Runner:
        if self.runner is None:
            raise OrchestrionError(f"agent runs are not available here: {self.runs_error or 'starting'}")
        return self.runner


# The composition root, given by the process's entry point: (settings, role) -> an opened Host.
HostOpener = Callable[[Settings, str], AbstractAsyncContextManager[Host]]
