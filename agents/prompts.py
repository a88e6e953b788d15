"""What the agents tell the model. Kept short: the same prompts serve small local models and large hosted ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agents.citations import label

PLANNER = """You plan how to answer a user's request with the tools below. Write an ordered list of steps:
- "retrieve": search the user's documents (give a `query`);
- "tool": call one tool (give `tool`, its exact name, and `arguments` if you know them);
- "answer": write the final answer from what the steps found; it is always the last step, and only one.
Each step has a short unique `id` and lists in `depends_on` the ids of earlier steps it needs; steps that do not
depend on each other run at the same time. Use as few steps as the request needs; most need one or two
retrieve steps and the answer. Never plan steps that change or delete data unless the user asked for it.

Tools:
{tools}"""

REPLAN = """The previous plan could not finish: {reason}
Results so far:
{results}
Write a new plan for what is still missing{avoid}."""

INVALID_PLAN = "That plan cannot run: {problems}. Write the whole plan again, fixing these problems."

REWRITE = """Write up to 3 short search queries (keywords and phrases) that find passages answering the request.
Request: {request}"""

ARGUMENTS = """Give the arguments for the tool `{tool}` ({description}) to do this: {goal}
The user's request: {question}
{evidence}"""

ANSWER = """Answer the user's request using only the numbered sources below. Cite the sources you use like [1] or
[2, 3] right after the statements they support. If the sources do not contain the answer, say so plainly."""


def tool_lines(tools: Sequence[Any]) -> str:
    if not tools:
        return "(none: only retrieve and answer steps)"
    lines = []
    for t in tools:
        props = (t.input_schema or {}).get("properties", {})
        args = ", ".join(f"{k}: {v.get('type', 'any')}" for k, v in props.items())
        lines.append(f"- {t.name}({args}): {t.description[:300]}")
    return "\n".join(lines)


def sources_block(evidence: Sequence[dict[str, Any]], chars: int = 1200) -> str:
    if not evidence:
        return "(no sources were found)"
    parts = []
    for n, item in enumerate(evidence, 1):
        text = str(item.get("text", ""))
        parts.append(f"[{n}] {label(item)}\n{text[:chars]}")
    return "\n\n".join(parts)


def results_block(results: dict[str, Any]) -> str:
    if not results:
        return "(none)"
    return "\n".join(f"- {sid}: {json.dumps(r, default=str)[:400]}" for sid, r in results.items())
