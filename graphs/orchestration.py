"""The orchestration graph: planner -> fan-out of ready steps (retriever, executor) -> gather -> ... -> answer.

    START -> plan -> (Send "step" for each ready step | answer | stop)
    step -> gather -> (replan -> plan | next ready steps | answer | stop)
    answer -> END;  stop -> END

Steps whose dependencies are met run in the same superstep (LangGraph `Send`), up to
`max_parallel_steps`. `gather` runs once per superstep: it decides whether the run needs a new
plan (a failed step, no evidence at all), and whether a budget is spent (steps, tool calls,
tokens, wall time), which ends the run with the reason in `stop_reason`.
"""

from __future__ import annotations

import time
from typing import Any

from langgraph.errors import GraphBubbleUp
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from agents.budgets import Budgets
from agents.deps import AgentDeps
from agents.executor import answer_step, tool_step
from agents.planner import plan_step
from agents.retriever import retrieve_step
from agents.state import RunContext, RunState, StepTask
from observability.observations import observe

GRAPH_NAME = "orchestration"
PASS = (GraphBubbleUp,)  # an interrupt (waiting for an approval) goes through a node's span: not a failure


def build_graph(deps: AgentDeps) -> StateGraph[RunState, RunContext, RunState, RunState]:
    """The uncompiled graph; compile it with the process's checkpointer."""

    # A span per node execution (observability/observations.py): the model calls and tool calls a node makes
    # nest under it, and its output is the part of the state it changed.
    async def plan(state: RunState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        with observe("plan", as_type="chain", metadata={"replans": state.get("replans", 0)}, control_flow=PASS) as node:
            update = await plan_step(state, deps, runtime.context)
            node.output(update.get("plan"))
            if update.get("replans", 0) > state.get("replans", 0):
                from observability.instruments import RUN_REPLANS  # here: a worker imports it after its setup

                RUN_REPLANS.labels(GRAPH_NAME).inc()
            return update

    async def step(task: StepTask, runtime: Runtime[RunContext]) -> dict[str, Any]:
        kind = task["step"]["kind"]
        as_type = "retriever" if kind == "retrieve" else "tool"
        with observe(f"step {kind}", as_type=as_type, input=task["step"], control_flow=PASS) as node:
            if kind == "retrieve":
                rewrite = (task["step"].get("query") is None) and await deps.can_plan(runtime.context.tenant)
                update = await retrieve_step(task, deps, runtime.context, rewrite)
            else:
                update = await tool_step(task, deps, runtime.context)
            results = list((update.get("step_results") or {}).values())
            node.output(results[0] if len(results) == 1 else results)
            if any(not r.get("ok") for r in results):
                node.failed("; ".join(str(r.get("error")) for r in results if not r.get("ok")))
            return update

    async def gather(state: RunState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        with observe("gather", as_type="chain") as node:
            update = judge(state, runtime.context.budgets)
            node.output(update)
            return update

    async def answer(state: RunState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        evidence = len(state.get("evidence") or [])
        with observe("answer", as_type="chain", metadata={"evidence": evidence}, control_flow=PASS) as node:
            update = await answer_step(state, deps, runtime.context)
            node.output(update.get("answer"))
            return update

    async def stop(state: RunState, runtime: Runtime[RunContext]) -> dict[str, Any]:
        with observe("stop", as_type="chain") as node:
            limits = runtime.context.budgets
            reason = state.get("stop_reason") or spent(state, limits) or pending_budget(state, limits)
            node.output(reason)
            from observability.instruments import RUN_BUDGET_STOPS

            RUN_BUDGET_STOPS.labels(GRAPH_NAME, budget_of(reason)).inc()
            return {"stop_reason": reason, "answer": None, "citations": []}

    def after(state: RunState, runtime: Runtime[RunContext]) -> list[Send] | str:
        return schedule(state, runtime.context.budgets)

    graph: StateGraph[RunState, RunContext, RunState, RunState] = StateGraph(RunState, context_schema=RunContext)
    graph.add_node("plan", plan)
    graph.add_node("step", step)  # type: ignore[call-overload]  # its input is a Send payload, not the state
    graph.add_node("gather", gather)
    graph.add_node("answer", answer)
    graph.add_node("stop", stop)
    graph.add_edge(START, "plan")
    graph.add_conditional_edges("plan", after, ["step", "answer", "stop", "plan"])
    graph.add_edge("step", "gather")
    graph.add_conditional_edges("gather", after, ["step", "answer", "stop", "plan"])
    graph.add_edge("answer", END)
    graph.add_edge("stop", END)
    return graph


def spent(state: RunState, s: Budgets) -> str | None:
    """The token or time budget this run has used up, if any (steps and tool calls are rationed by `schedule`)."""
    usage = state.get("usage") or {}
    if usage.get("tokens", 0) >= s.max_tokens:
        return f"token budget spent ({int(usage['tokens'])} of {s.max_tokens} tokens)"
    # Active time only: the time a run waited for a person's decision is not spent by the run.
    elapsed = time.time() - state.get("started_at", time.time()) - usage.get("paused_s", 0.0)
    if elapsed >= s.max_wall_s:
        return f"time budget spent ({elapsed:.0f} s of {s.max_wall_s:.0f} s)"
    return None


def judge(state: RunState, limits: Budgets) -> dict[str, Any]:
    """After a superstep of steps: a budget stop, a replan, or nothing (the schedule goes on)."""
    reason = spent(state, limits)
    if reason:
        return {"stop_reason": reason}
    plan = state.get("plan") or {"steps": []}
    results = state.get("step_results") or {}
    current = [results[s["id"]] for s in plan["steps"] if s["id"] in results]
    failed = [r for r in current if not r.get("ok")]
    if state.get("replans", 0) >= limits.max_replans:
        return {}  # no new plan: the answer is written from what was found
    if failed:
        return {"needs_replan": "; ".join(f"{r.get('tool') or r.get('kind')}: {r.get('error')}" for r in failed)}
    retrieved = [r for r in current if r.get("kind") == "retrieve"]
    if (
        retrieved
        and len(retrieved) == sum(s["kind"] == "retrieve" for s in plan["steps"])
        and not state.get("evidence")
    ):
        return {"needs_replan": "the searches found no passages: search with other words or filters"}
    return {}


def schedule(state: RunState, limits: Budgets) -> list[Send] | str:
    """Where the run goes next: the ready steps (in parallel), the answer, a new plan, or the stop."""
    if state.get("stop_reason") or spent(state, limits):
        return "stop"
    if state.get("needs_replan"):
        return "plan"
    plan = state.get("plan") or {"steps": []}
    results = state.get("step_results") or {}
    done = {sid for sid, r in results.items() if r.get("ok")}
    # A step whose dependency failed (no replan left) never becomes ready: the answer is written without it.
    ready = [
        s
        for s in plan["steps"]
        if s["kind"] != "answer" and s["id"] not in results and all(d in done for d in s["depends_on"])
    ]
    if not ready:
        return "answer"
    usage = state.get("usage") or {}
    steps_left = limits.max_steps - int(usage.get("steps", 0))
    calls_left = limits.max_tool_calls - int(usage.get("tool_calls", 0))
    chosen: list[dict[str, Any]] = []
    for s in ready[: limits.max_parallel_steps]:
        if len(chosen) >= steps_left or (s["kind"] == "tool" and calls_left <= 0):
            continue
        calls_left -= s["kind"] == "tool"
        chosen.append(s)
    if not chosen:
        return "stop"  # `stop` names the budget that is spent
    evidence = (state.get("evidence") or [])[:5]
    question, run_id = state.get("question", ""), state.get("run_id", "")
    return [Send("step", StepTask(step=s, question=question, run_id=run_id, evidence=evidence)) for s in chosen]


_BUDGETS = {"token": "tokens", "time": "time", "step": "steps", "tool-call": "tool_calls"}


def budget_of(stop_reason: str) -> str:
    """Which budget a stop reason names ("step budget spent (...)" -> "steps"), as a bounded label."""
    return _BUDGETS.get(stop_reason.split(" budget", 1)[0], "other")


def pending_budget(state: RunState, limits: Budgets) -> str:
    usage = state.get("usage") or {}
    if int(usage.get("steps", 0)) >= limits.max_steps:
        return f"step budget spent ({int(usage.get('steps', 0))} of {limits.max_steps} steps)"
    return f"tool-call budget spent ({int(usage.get('tool_calls', 0))} of {limits.max_tool_calls} tool calls)"
