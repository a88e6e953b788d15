"""The executor: a plan's tool steps, and the final answer written from the evidence with numbered citations.

A tool step's arguments are the plan's when they satisfy the tool's input schema, else the model is asked
for them (structured output with that schema). A tool flagged `requires_approval` interrupts the run
(LangGraph `interrupt`) with the call it would make; the run waits durably for `Command(resume=...)`;
a rejection fails the step, which sends the run back to the planner. A long-running tool goes to the
Celery `tools` queue under the call id run id + step id, so a resumed run attaches to the same call.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langgraph.config import get_stream_writer
from langgraph.types import interrupt

from agents import prompts
from agents.citations import citation_list, clean_citations, label
from agents.deps import AgentDeps
from agents.planner import history
from agents.state import RunContext, RunState, StepTask
from core.errors import InvalidInputError, OrchestrionError
from observability.observations import observe
from tools.toolbox import ToolResult, ToolSpec

ARGUMENT_TOKENS = 400
TOOL_TEXT_CHARS = 4000


async def tool_step(task: StepTask, deps: AgentDeps, ctx: RunContext) -> dict[str, Any]:
    step = task["step"]
    sid, name = step["id"], step.get("tool") or ""
    try:
        spec = deps.toolbox.get(name)
    except InvalidInputError as exc:
        return _failed(sid, name, str(exc))
    arguments, tokens, problem = await _arguments(task, spec, deps, ctx)
    if arguments is None:
        return _failed(sid, name, problem, tokens=tokens)
    if spec.requires_approval:
        verdict = _normalise(
            interrupt(
                {
                    "kind": "approval",
                    "run_id": ctx.run_id,
                    "step_id": sid,
                    "tool": name,
                    "arguments": arguments,
                    "goal": step.get("goal", ""),
                    "description": spec.description[:500],
                }
            )
        )
        if not verdict["approved"]:
            reason = f"rejected by the user{': ' + verdict['reason'] if verdict['reason'] else ''}"
            result = _failed(sid, name, reason, tokens=tokens)
            return {**result, "rejected_tools": [name]}
        if isinstance(verdict.get("arguments"), dict):  # exactly what was approved, even if the model differs now
            arguments = verdict["arguments"]
    get_stream_writer()({"event": "step", "step": sid, "kind": "tool", "detail": f"calling tool {name}"})
    outcome = await _call(spec, arguments, deps, ctx, sid)
    text = outcome.text or (json.dumps(outcome.structured) if outcome.structured else "")
    result = {
        "ok": outcome.ok,
        "kind": "tool",
        "tool": name,
        "arguments": arguments,
        "long": spec.long_running,
        "output": text[:500],
        "error": outcome.error,
    }
    update: dict[str, Any] = {"step_results": {sid: result}, "usage": {"steps": 1, "tool_calls": 1, "tokens": tokens}}
    if outcome.ok and text:
        update["evidence"] = [
            {
                "key": f"tool:{sid}",
                "kind": "tool",
                "title": name,
                "doc_id": None,
                "heading_path": [],
                "chunk_index": None,
                "score": None,
                "source": f"tool:{name}",
                "text": text[:TOOL_TEXT_CHARS],
                "step": sid,
            }
        ]
    return update


async def _call(spec: ToolSpec, arguments: dict[str, Any], deps: AgentDeps, ctx: RunContext, sid: str) -> ToolResult:
    """Each call takes effect once: long calls on Celery, other calls with effects through the same record (a
    resumed run gets their result, or a failed step if its process stopped mid-call); read-only calls run."""
    calls, call_id = deps.long_calls, f"{ctx.run_id}:{sid}"
    if calls is not None and spec.long_running:
        # The client side of a call a worker makes: its `send` span and the worker's task span go under it.
        metadata = {"server": spec.server, "queue": "tools", "call_id": call_id}
        with observe(f"tool {spec.name}", as_type="tool", input=arguments, metadata=metadata) as span:
            result = await calls.run(call_id, ctx.run_id, spec.name, arguments, deps.settings.long_tool_timeout_s)
            span.output(result.public())
            if not result.ok:
                span.failed(result.error)
            return result

    async def direct() -> ToolResult:
        return await deps.toolbox.call(ctx.tenant, spec.name, arguments)

    if calls is not None and not spec.read_only:
        return await calls.once(call_id, ctx.run_id, spec.name, arguments, direct, deps.settings.tool_timeout_s)
    return await direct()


async def _arguments(
    task: StepTask, spec: ToolSpec, deps: AgentDeps, ctx: RunContext
) -> tuple[dict[str, Any] | None, int, str]:
    given = task["step"].get("arguments")
    if isinstance(given, dict) and _valid(given, spec) is None:
        return given, 0, ""
    schema = spec.input_schema or {"type": "object"}
    model = deps.chat(ctx.tenant, "arguments", ARGUMENT_TOKENS).with_structured_output(schema, include_raw=True)
    evidence = prompts.sources_block(task["evidence"][:3], chars=400) if task["evidence"] else ""
    ask = prompts.ARGUMENTS.format(
        tool=spec.name,
        description=spec.description[:300],
        goal=task["step"].get("goal", ""),
        question=task["question"],
        evidence=evidence,
    )
    try:
        reply: Any = await model.ainvoke(ask)
    except OrchestrionError as exc:
        return None, 0, f"could not get arguments for {spec.name}: {exc}"
    tokens = int((getattr(reply.get("raw"), "usage_metadata", None) or {}).get("total_tokens", 0))
    parsed = reply.get("parsed")
    if not isinstance(parsed, dict):
        return None, tokens, f"no valid arguments for {spec.name}: {reply.get('parsing_error')}"
    problem = _valid(parsed, spec)
    return (parsed, tokens, "") if problem is None else (None, tokens, f"invalid arguments for {spec.name}: {problem}")


def _valid(arguments: dict[str, Any], spec: ToolSpec) -> str | None:
    try:
        jsonschema.validate(arguments, spec.input_schema or {"type": "object"})
    except jsonschema.ValidationError as exc:
        return str(exc.message)[:300]
    except jsonschema.SchemaError:
        return None  # the server's schema is not one we can check against: the server validates
    return None


def _normalise(resume: Any) -> dict[str, Any]:
    """Resume values the API and MCP `approve` send, and the short forms a person types."""
    if isinstance(resume, bool):
        return {"approved": resume, "reason": ""}
    if isinstance(resume, str):
        return {"approved": resume.strip().lower() in ("approve", "approved", "yes", "y", "ok"), "reason": ""}
    if isinstance(resume, dict):
        decision = str(resume.get("decision", resume.get("approved", ""))).lower()
        return {
            "approved": decision in ("approve", "approved", "true", "yes"),
            "reason": str(resume.get("reason", "")),
            "arguments": resume.get("arguments"),
        }
    return {"approved": False, "reason": f"unreadable decision {resume!r}"}


def _failed(sid: str, tool: str, error: str, tokens: int = 0) -> dict[str, Any]:
    return {
        "step_results": {sid: {"ok": False, "kind": "tool", "tool": tool, "error": error}},
        "usage": {"steps": 1, "tokens": tokens},
    }


async def answer_step(state: RunState, deps: AgentDeps, ctx: RunContext) -> dict[str, Any]:
    evidence = (state.get("evidence") or [])[: deps.settings.max_evidence]
    question = state.get("question", "")
    get_stream_writer()({"event": "answer", "sources": len(evidence)})
    tokens = 0
    if evidence:
        chat: list[BaseMessage] = [
            SystemMessage(prompts.ANSWER),
            *history(state, deps.settings.history_turns),
            HumanMessage(f"Sources:\n\n{prompts.sources_block(evidence)}\n\nRequest: {question}"),
        ]
        model = deps.chat(ctx.tenant, "answer", deps.settings.answer_max_tokens)
        try:
            reply = await model.ainvoke(chat)
        except OrchestrionError as exc:
            reply = AIMessage("")
            failure = f"the answer could not be written ({exc}); the sources found are listed"
        else:
            failure = ""
        usage: dict[str, Any] = dict(reply.usage_metadata or {}) if isinstance(reply, AIMessage) else {}
        tokens = int(usage.get("total_tokens", 0))
        text, cited = clean_citations(reply.text if isinstance(reply, AIMessage) else "", len(evidence))
        if not text:
            text = failure or _extractive(evidence)
            cited = []
        if not cited:  # grounded whatever the model wrote: the passages it was given are its sources
            cited = list(range(1, min(3, len(evidence)) + 1))
            text = f"{text}\n\nSources: " + "; ".join(f"[{n}] {label(evidence[n - 1])}" for n in cited)
    else:
        failures = [r.get("error") for r in (state.get("step_results") or {}).values() if r.get("error")]
        text = "I found nothing in your documents about this." + (f" ({failures[0]})" if failures else "")
        cited = []
    return {
        "answer": text,
        "citations": citation_list(evidence, cited),
        "messages": [AIMessage(text, id=f"{ctx.run_id}:answer")],
        "usage": {"tokens": tokens},
    }


def _extractive(evidence: list[dict[str, Any]]) -> str:
    """The best passage's opening, cited: an answer from the sources when the model gave none."""
    text = " ".join(str(evidence[0].get("text", "")).split())
    return (text[:400].rsplit(" ", 1)[0] + " …" if len(text) > 400 else text) + " [1]"
