"""What the agent API's routes share in one process, opened with the app (api/app.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.agent.admission import Admission
from api.agent.hub import StreamHub
from api.agent.idempotency import Idempotency
from core.errors import OrchestrionError
from core.settings import RunApiSettings
from graphs.runner import Runner


@dataclass
class AgentApi:
    runner: Runner
    hub: StreamHub
    idempotency: Idempotency
    admission: Admission
    settings: RunApiSettings


def agent_api(request: Request) -> AgentApi:
    found: AgentApi | None = getattr(request.app.state, "agent_api", None)
    if found is None:
        host = getattr(request.app.state, "host", None)
        reason = host.runs_error if host is not None else "the server is starting"
        raise OrchestrionError(f"agent runs are not available here: {reason or 'no model fleet'}")
    return found


Agent = Annotated[AgentApi, Depends(agent_api)]
