"""The retriever: a retrieve step's searches, through the retrieval MCP tool, as cited evidence.

Queries: the step's own, plus up to three rewrites by the model when the tier can plan (a model
that cannot would only add noise). Filters: written in the request as `tag:NAME` (any of those
tags) or `doc:ID` (that document); they are removed from the query text. Hits are de-duplicated
per passage (best score kept) and ordered best first.
"""

from __future__ import annotations

import re
from typing import Any

from langgraph.config import get_stream_writer
from pydantic import BaseModel, Field

from agents import prompts
from agents.deps import AgentDeps
from agents.state import RunContext, StepTask
from core.errors import OrchestrionError

REWRITE_TOKENS = 120
_FILTER = re.compile(r"(?<!\S)(tag|doc):(\"[^\"]+\"|\S+)", re.IGNORECASE)


class Queries(BaseModel):
    """Search queries for a request."""

    queries: list[str] = Field(default_factory=list, max_length=3)


def split_filters(text: str) -> tuple[str, dict[str, Any] | None]:
    """`tag:x doc:y` out of a query: the rest of the text, and the filter they name (None when none)."""
    tags: list[str] = []
    docs: list[str] = []
    for kind, value in _FILTER.findall(text):
        (tags if kind.lower() == "tag" else docs).append(value.strip('"'))
    rest = re.sub(r"\s{2,}", " ", _FILTER.sub("", text)).strip()
    conditions: list[dict[str, Any]] = []
    if tags:
        conditions.append({"field": "tags", "op": "any_of", "value": tags})
    if docs:
        conditions.append({"any": [{"field": "doc_id", "op": "eq", "value": d} for d in docs]})
    if not conditions:
        return rest, None
    return rest or text, conditions[0] if len(conditions) == 1 else {"all": conditions}


async def retrieve_step(task: StepTask, deps: AgentDeps, ctx: RunContext, rewrite: bool) -> dict[str, Any]:
    step = task["step"]
    query, filters = split_filters(step.get("query") or step.get("goal") or task["question"])
    _, asked_filters = split_filters(task["question"])
    filters = filters or asked_filters
    queries = [query]
    tokens = 0
    if rewrite:
        extra, tokens = await _rewrites(deps, ctx, query)
        queries += [q for q in extra if q.lower() != query.lower()]
    get_stream_writer()({"event": "step", "step": step["id"], "kind": "retrieve", "detail": f"searching: {query}"})
    found: dict[str, dict[str, Any]] = {}
    failures: list[str] = []
    for q in queries:
        args: dict[str, Any] = {"query": q, "k": deps.settings.evidence_k}
        if filters is not None:
            args["filters"] = filters
        result = await deps.toolbox.call(ctx.tenant, deps.search_tool, args)
        if not result.ok:
            failures.append(result.error)
            continue
        for hit in (result.structured or {}).get("hits", []):
            item = evidence_item(hit, step["id"])
            kept = found.get(item["key"])
            if kept is None or item["score"] > kept["score"]:
                found[item["key"]] = item
    evidence = sorted(found.values(), key=lambda i: -i["score"])
    ok = bool(evidence) or not failures
    outcome = {"ok": ok, "kind": "retrieve", "queries": queries, "filters": filters, "hits": len(evidence)}
    if failures and not evidence:
        outcome["error"] = "search failed: " + failures[0]
    return {"step_results": {step["id"]: outcome}, "evidence": evidence, "usage": {"steps": 1, "tokens": tokens}}


async def _rewrites(deps: AgentDeps, ctx: RunContext, query: str) -> tuple[list[str], int]:
    model = deps.chat(ctx.tenant, "rewrite", REWRITE_TOKENS).with_structured_output(Queries, include_raw=True)
    try:
        reply: Any = await model.ainvoke(prompts.REWRITE.format(request=query))
    except OrchestrionError:
        return [], 0
    usage = getattr(reply.get("raw"), "usage_metadata", None) or {}
    parsed = reply.get("parsed")
    queries = [q.strip() for q in parsed.queries if q.strip()] if isinstance(parsed, Queries) else []
    return queries[:3], int(usage.get("total_tokens", 0))


def evidence_item(hit: dict[str, Any], step_id: str) -> dict[str, Any]:
    return {
        "key": f"doc:{hit['doc_id']}#{hit['chunk_index']}",
        "kind": "document",
        "doc_id": hit["doc_id"],
        "title": hit.get("title") or hit["doc_id"],
        "heading_path": list(hit.get("heading_path") or []),
        "chunk_index": hit["chunk_index"],
        "score": float(hit.get("score") or 0.0),
        "source": hit.get("source", ""),
        "text": hit.get("text", ""),
        "step": step_id,
    }
