"""A run's observation: the root of its part of the trace, with the trace-level fields Langfuse groups by.

Trace name = the graph, session = the thread, user = the tenant (`tenant:user` when the run's metadata names
a user: a caller's user id is a label, never a tenant), tags = the graph and the model tiers the run used.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from langfuse import propagate_attributes

from observability.observations import Observation, observe
from observability.propagation import parent_for

_tiers: ContextVar[set[str] | None] = ContextVar("orchestrion_run_tiers", default=None)
MAX_LABEL = 200  # Langfuse's limit for user and session ids


def note_tier(tier: str) -> None:
    """Called per model call: the run this call belongs to (if any) used `tier`."""
    tiers = _tiers.get()
    if tiers is not None:
        tiers.add(tier)


@dataclass
class RunObservation:
    observation: Observation
    graph: str
    tiers: set[str] = field(default_factory=set)

    def finish(self, status: str, output: Any) -> None:
        self.observation.output(output)
        self.observation.metadata(status=status, tiers=sorted(self.tiers))
        self.observation.tags([self.graph, *(f"tier:{t}" for t in sorted(self.tiers))])


def user_label(tenant: str, metadata: dict[str, Any]) -> str:
    user = metadata.get("user_id")
    if isinstance(user, str) and user and user.isascii() and user.isprintable():
        return f"{tenant}:{user}"[:MAX_LABEL]
    return tenant


@contextmanager
def run_observation(
    *, graph: str, run_id: str, thread_id: str, tenant: str, metadata: dict[str, Any], question: str,
    traceparent: str | None, execution: int,
) -> Iterator[RunObservation]:  # fmt: skip
    context, links = parent_for(traceparent)
    with observe(
        f"run {graph}", as_type="agent", input={"question": question}, context=context, links=links,
        metadata={"run_id": run_id, "thread_id": thread_id, "tenant": tenant, "execution": execution},
    ) as observation:  # fmt: skip
        observation.span.set_attributes({"run.id": run_id, "thread.id": thread_id})
        run = RunObservation(observation, graph)
        token = _tiers.set(run.tiers)
        try:
            with propagate_attributes(
                user_id=user_label(tenant, metadata), session_id=thread_id[:MAX_LABEL], trace_name=graph,
                tags=[graph], metadata={"run_id": run_id},
            ):  # fmt: skip
                yield run
        finally:
            _tiers.reset(token)
