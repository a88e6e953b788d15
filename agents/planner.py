"""The planner: the request and the thread's history in, a checked plan out.

The model is asked for a `PlanDraft` (structured output, however the answering deployment does it).
An invalid plan is retried once with the problems named; after a second failure, or when the planning
tier's models cannot plan (the bundled Gemma), the fixed plan (retrieve, then answer) is used, and the
plan records why. A replan (a failed step, no evidence) shows the model what happened and which tools
were rejected.
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.config import get_stream_writer

from agents import prompts
from agents.deps import AgentDeps
from agents.plan import PlanDraft, PlanError, check_plan, fixed_plan, numbered
from agents.state import RunContext, RunState
from core.errors import OrchestrionError

log = logging.getLogger(__name__)
PLAN_TOKENS = 700


async def plan_step(state: RunState, deps: AgentDeps, ctx: RunContext) -> dict[str, Any]:
    version = len(state.get("plans") or []) + 1
    replanning = state.get("needs_replan")
    rejected = set(state.get("rejected_tools") or [])
    tools = [t for t in deps.toolbox.specs() if t.name not in rejected and t.name != deps.search_tool]
    question = state.get("question", "")
    tokens = 0
    errors: list[str] = []
    draft: PlanDraft | None = None
    if not await deps.can_plan(ctx.tenant):
        source, reason = "fixed", "the planning tier's models cannot plan"
    else:
        chat = _planning_chat(state, tools, replanning, rejected)
        draft, tokens, errors = await _ask_for_plan(deps, ctx, chat, {t.name for t in tools})
        source, reason = ("model", "") if draft is not None else ("fallback", "no valid plan: " + " | ".join(errors))
    if draft is None:
        draft = fixed_plan(question)
    steps = numbered(version, draft.steps)
    plan = {
        "version": version,
        "source": source,
        "reason": reason,
        "errors": errors,
        "steps": steps,
        "run_id": ctx.run_id,
    }
    get_stream_writer()(
        {
            "event": "plan",
            "version": version,
            "source": source,
            "reason": reason,
            "steps": [{"id": s["id"], "kind": s["kind"], "goal": s["goal"]} for s in steps],
        }
    )
    return {
        "plan": plan,
        "plans": [plan],
        "replans": state.get("replans", 0) + (1 if replanning else 0),
        "needs_replan": None,
        "usage": {"tokens": tokens},
    }


def _planning_chat(state: RunState, tools: list[Any], replanning: str | None, rejected: set[str]) -> list[BaseMessage]:
    chat: list[BaseMessage] = [SystemMessage(prompts.PLANNER.format(tools=prompts.tool_lines(tools)))]
    chat.extend(history(state, 6))
    chat.append(HumanMessage(state.get("question", "")))
    if replanning:
        avoid = f", without the rejected tools {sorted(rejected)}" if rejected else ""
        results = prompts.results_block(state.get("step_results") or {})
        chat.append(HumanMessage(prompts.REPLAN.format(reason=replanning, results=results, avoid=avoid)))
    return chat


async def _ask_for_plan(
    deps: AgentDeps, ctx: RunContext, chat: list[BaseMessage], tools: set[str]
) -> tuple[PlanDraft | None, int, list[str]]:
    """Two tries: the second sees the first's answer and what was wrong with it."""
    model = deps.chat(ctx.tenant, "plan", PLAN_TOKENS).with_structured_output(PlanDraft, include_raw=True)
    tokens = 0
    errors: list[str] = []
    for _ in range(2):
        try:
            reply: Any = await model.ainvoke(chat)
        except OrchestrionError as exc:  # the model layer's own clear failure (unavailable, over budget)
            errors.append(str(exc))
            break
        raw = reply.get("raw")
        tokens += _tokens(raw)
        problem = reply.get("parsing_error")
        draft = reply.get("parsed")
        if problem is None and isinstance(draft, PlanDraft):
            try:
                check_plan(draft, tools, max_steps=ctx.budgets.max_steps)
                return draft, tokens, errors
            except PlanError as exc:
                problem = exc
        text = str(problem) if not isinstance(problem, OutputParserException) else str(problem).split("\n")[0]
        errors.append(text[:500])
        log.info("plan rejected (run %s): %s", ctx.run_id, text[:300])
        answer = raw.text if isinstance(raw, AIMessage) else ""
        chat = [*chat, AIMessage(answer[:4000]), HumanMessage(prompts.INVALID_PLAN.format(problems=text[:1000]))]
    return None, tokens, errors


def _tokens(message: Any) -> int:
    usage = getattr(message, "usage_metadata", None) or {}
    return int(usage.get("total_tokens", 0))


def history(state: RunState, turns: int) -> list[BaseMessage]:
    """The thread's earlier questions and answers (the current question excluded), the last `turns` pairs."""
    messages = [m for m in state.get("messages") or [] if isinstance(m, HumanMessage | AIMessage)]
    if messages and isinstance(messages[-1], HumanMessage):
        messages = messages[:-1]
    return list(messages[-2 * turns :]) if turns else []
