"""Plans: what the planner writes, how it is checked, and the plan used when no valid one comes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

StepKind = Literal["retrieve", "tool", "answer"]


class PlannedStep(BaseModel):
    """One step as the model writes it."""

    id: str = Field(min_length=1, max_length=40, description="Short unique id, e.g. s1.")
    kind: StepKind = Field(description="retrieve: search the documents; tool: call a tool; answer: write the answer.")
    goal: str = Field(min_length=1, max_length=500, description="What this step is for.")
    depends_on: list[str] = Field(default_factory=list, description="Ids of earlier steps this one needs.")
    query: str | None = Field(default=None, max_length=500, description="retrieve: what to search for.")
    tool: str | None = Field(default=None, max_length=128, description="tool: the tool's exact name.")
    arguments: dict[str, Any] | None = Field(default=None, description="tool: its arguments, if known.")


class PlanDraft(BaseModel):
    """A plan: ordered steps ending with one answer step."""

    steps: list[PlannedStep] = Field(min_length=1, max_length=12)


class PlanError(ValueError):
    """A plan that cannot run; the message lists every problem, for the planner's retry."""


def check_plan(draft: PlanDraft, tools: set[str], max_steps: int) -> list[PlannedStep]:
    """The draft's steps if it can run: ids unique, dependencies on earlier steps only (so no cycle), tools
    known, exactly one answer step and it is the last. Raises PlanError naming each problem."""
    problems: list[str] = []
    seen: set[str] = set()
    steps = draft.steps
    working = sum(s.kind != "answer" for s in steps)
    if working > max_steps:
        problems.append(f"{working} steps before the answer: at most {max_steps}")
    for position, step in enumerate(steps, 1):
        where = f"step {position} ({step.id!r})"
        if step.id in seen:
            problems.append(f"{where}: the id is used twice")
        unknown = [d for d in step.depends_on if d not in seen]
        if unknown:
            problems.append(f"{where}: depends on {unknown}, which are not earlier steps")
        if step.kind == "tool":
            if not step.tool:
                problems.append(f"{where}: a tool step must name its tool")
            elif step.tool not in tools:
                problems.append(f"{where}: no tool {step.tool!r} (tools: {', '.join(sorted(tools)) or 'none'})")
        elif step.tool:
            problems.append(f"{where}: only tool steps name a tool")
        seen.add(step.id)
    answers = [i for i, s in enumerate(steps) if s.kind == "answer"]
    if answers != [len(steps) - 1]:
        problems.append("the plan must end with exactly one answer step")
    if problems:
        raise PlanError("; ".join(problems))
    return steps


def fixed_plan(question: str) -> PlanDraft:
    """Retrieve, then answer: always runnable, always grounded."""
    return PlanDraft(
        steps=[
            PlannedStep(id="s1", kind="retrieve", goal="find passages about the question", query=question),
            PlannedStep(id="s2", kind="answer", goal="answer from the passages", depends_on=["s1"]),
        ]
    )


def numbered(version: int, steps: list[PlannedStep]) -> list[dict[str, Any]]:
    """Steps as the run state keeps them: ids prefixed with the plan's version (a replan's steps never collide
    with the results of earlier ones), an answer step depending on every step before it when it names none."""
    prefix = f"p{version}."
    out = []
    for position, step in enumerate(steps):
        depends = step.depends_on
        if step.kind == "answer" and not depends:
            depends = [s.id for s in steps[:position]]
        out.append(
            {
                "id": prefix + step.id,
                "kind": step.kind,
                "goal": step.goal,
                "query": step.query,
                "tool": step.tool,
                "arguments": step.arguments,
                "depends_on": [prefix + d for d in depends],
            }
        )
    return out
