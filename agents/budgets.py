"""A run's budgets: the server's limits (AGENTS__MAX_*), which a client's run config may only lower.

A client sends them in `config.configurable` (`max_steps`, `max_tokens`, ...), as LangGraph programs pass
per-run settings; they travel in the run's options and reach the graph in its runtime context, never in the
state, so no state update, tool result or model output can raise them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from core.errors import InvalidInputError
from core.settings import AgentSettings


@dataclass(frozen=True)
class Budgets:
    max_steps: int
    max_tool_calls: int
    max_tokens: int
    max_wall_s: float
    max_replans: int
    max_parallel_steps: int


NAMES = tuple(f.name for f in fields(Budgets))
# The least each budget can be: a run needs one step and one parallel slot; none of the others is required.
_FLOORS = {"max_steps": 1, "max_tool_calls": 0, "max_tokens": 1, "max_wall_s": 0.001, "max_replans": 0,
           "max_parallel_steps": 1}  # fmt: skip


def server_budgets(settings: AgentSettings) -> Budgets:
    return Budgets(**{name: getattr(settings, name) for name in NAMES})


def requested_budgets(configurable: Mapping[str, Any], server: Budgets) -> dict[str, float]:
    """The budgets a run's `config.configurable` asks for (other keys are the graph's to ignore), checked
    against the server's: each a number at least its floor and at most the server's limit."""
    asked: dict[str, float] = {}
    for name in NAMES:
        if name not in configurable:
            continue
        value, limit = configurable[name], getattr(server, name)
        where = f"config.configurable.{name}"
        integral = isinstance(limit, int)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidInputError(f"{where} must be a number, not {value!r}")
        if integral and value != int(value):
            raise InvalidInputError(f"{where} must be a whole number, not {value}")
        if value < _FLOORS[name]:
            raise InvalidInputError(f"{where} must be at least {_FLOORS[name]}, not {value}")
        if value > limit:
            raise InvalidInputError(
                f"{where}={value} is above this server's limit of {limit}: budgets can only be lowered"
            )
        asked[name] = int(value) if integral else float(value)
    return asked


def run_budgets(settings: AgentSettings, asked: Mapping[str, float] | None) -> Budgets:
    """The budgets a run executes with: what it asked for, never above the server's limits of now (they may
    have been lowered since the run was admitted)."""
    server = server_budgets(settings)
    lowered = {name: min(value, getattr(server, name)) for name, value in (asked or {}).items() if name in NAMES}
    return replace(server, **lowered)
