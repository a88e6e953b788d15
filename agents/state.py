"""The run state the agents read and write, its reducers, and the run's fixed context.

A thread's state lives in the checkpointer across runs: `messages` keeps the conversation;
everything else is the current run's and is reset by the run's input (`RESET`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langchain_core.messages import AnyMessage
from langgraph.graph.message import add_messages

from agents.budgets import Budgets

# Written by a run's input to empty a merging channel (a plain value cannot: the reducer would merge it).
RESET: dict[str, Any] = {"__reset__": True}


def merge_results(old: dict[str, Any] | None, new: dict[str, Any] | None) -> dict[str, Any]:
    if new is None or new.get("__reset__"):
        return {}
    return {**(old or {}), **new}


def merge_evidence(
    old: list[dict[str, Any]] | None, new: list[dict[str, Any]] | dict[str, Any]
) -> list[dict[str, Any]]:
    """Evidence from every step, once per passage (the best score kept), best first."""
    if isinstance(new, dict):  # RESET
        return []
    best: dict[str, dict[str, Any]] = {item["key"]: item for item in old or []}
    for item in new:
        kept = best.get(item["key"])
        if kept is None or (item.get("score") or 0) > (kept.get("score") or 0):
            best[item["key"]] = item
    return sorted(best.values(), key=lambda i: (i.get("kind") != "tool", -(i.get("score") or 0.0)))


def extend(old: list[Any] | None, new: list[Any] | dict[str, Any]) -> list[Any]:
    if isinstance(new, dict):  # RESET
        return []
    return [*(old or []), *new]


def add_usage(old: dict[str, float] | None, new: dict[str, float]) -> dict[str, float]:
    if new.get("__reset__"):
        return {}
    out = dict(old or {})
    for key, value in new.items():
        out[key] = out.get(key, 0) + value
    return out


class RunState(TypedDict, total=False):
    messages: Annotated[list[AnyMessage], add_messages]
    question: str
    run_id: str
    started_at: float
    plan: dict[str, Any] | None  # {"version", "source", "reason", "steps": [...]}
    plans: Annotated[list[dict[str, Any]], extend]  # every plan of the run, for the trace and the state
    step_results: Annotated[dict[str, Any], merge_results]
    evidence: Annotated[list[dict[str, Any]], merge_evidence]
    usage: Annotated[dict[str, float], add_usage]  # steps, tool_calls, tokens
    replans: int
    needs_replan: str | None  # why the next step is a new plan
    rejected_tools: Annotated[list[str], extend]
    stop_reason: str | None
    answer: str | None
    citations: list[dict[str, Any]]


class StepTask(TypedDict):
    """What one step of a fan-out receives (LangGraph `Send`)."""

    step: dict[str, Any]
    question: str
    run_id: str
    evidence: list[dict[str, Any]]


@dataclass(frozen=True)
class RunContext:
    """Fixed for a run (LangGraph runtime context): who it runs for comes from credentials or the stored run
    record, never from the state a model could write."""

    tenant: str
    run_id: str
    thread_id: str
    budgets: Budgets


def run_input(question: str, run_id: str, started_at: float) -> RunState:
    from langchain_core.messages import HumanMessage

    return {
        "messages": [HumanMessage(question, id=f"{run_id}:question")],
        "question": question,
        "run_id": run_id,
        "started_at": started_at,
        "plan": None,
        "plans": RESET,  # type: ignore[typeddict-item]
        "rejected_tools": RESET,  # type: ignore[typeddict-item]
        "step_results": RESET,
        "evidence": RESET,  # type: ignore[typeddict-item]
        "usage": RESET,
        "replans": 0,
        "needs_replan": None,
        "stop_reason": None,
        "answer": None,
        "citations": [],
    }
