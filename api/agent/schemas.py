"""Request bodies of the agent API, as `langgraph_sdk` 0.4 sends them (unknown fields are ignored, as the
official server ignores them; fields Orchestrion does not implement are refused with a clear error)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

StreamModeName = Literal[
    "values", "updates", "messages", "messages-tuple", "custom", "debug", "events", "tasks", "checkpoints"
]


class Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class AssistantSearch(Lenient):
    graph_id: str | None = None
    name: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class ThreadCreate(Lenient):
    thread_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    metadata: dict[str, Any] = Field(default_factory=dict)
    if_exists: Literal["raise", "do_nothing"] = "raise"


class ThreadPatch(Lenient):
    metadata: dict[str, Any] = Field(default_factory=dict)


class ThreadSearch(Lenient):
    metadata: dict[str, Any] | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    ids: list[str] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0)


class Checkpoint(Lenient):
    thread_id: str | None = None
    checkpoint_ns: str = ""
    checkpoint_id: str | None = None


class StateUpdate(Lenient):
    values: dict[str, Any] | list[dict[str, Any]] | None = None
    as_node: str | None = None
    checkpoint: Checkpoint | None = None
    checkpoint_id: str | None = None


class HistoryRequest(Lenient):
    limit: int = Field(default=10, ge=1, le=1000)
    before: Checkpoint | str | None = None
    metadata: dict[str, Any] | None = None
    checkpoint: Checkpoint | None = None


class Command(Lenient):
    resume: Any = None
    update: dict[str, Any] | None = None
    goto: Any = None


class Config(Lenient):
    """A run's config: `configurable` may lower the run's budgets (agents/budgets.py; other keys are ignored, as
    a graph ignores keys it does not read), `tags` and `metadata` go with the run, `recursion_limit` bounds
    its graph steps."""

    configurable: dict[str, Any] = Field(default_factory=dict)
    tags: list[str] = Field(default_factory=list, max_length=50)
    metadata: dict[str, Any] = Field(default_factory=dict)
    recursion_limit: int | None = Field(default=None, ge=1, le=10_000)


class RunCreate(Lenient):
    assistant_id: str = "orchestration"
    input: dict[str, Any] | None = None
    command: Command | None = None
    config: Config | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    stream_mode: StreamModeName | list[StreamModeName] = "values"
    stream_subgraphs: bool = False
    stream_resumable: bool = False
    interrupt_before: Literal["*"] | list[str] | None = None
    interrupt_after: Literal["*"] | list[str] | None = None
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] = "enqueue"
    if_not_exists: Literal["create", "reject"] = "reject"
    on_disconnect: Literal["cancel", "continue"] = "continue"
    on_completion: Literal["delete", "keep"] = "delete"
    durability: Literal["sync", "async", "exit"] | None = None
    webhook: str | None = None
    after_seconds: int | None = None
    checkpoint_id: str | None = None
    checkpoint: Checkpoint | None = None

    def modes(self) -> list[str]:
        return [self.stream_mode] if isinstance(self.stream_mode, str) else list(self.stream_mode)
