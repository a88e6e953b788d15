"""Model router tools: explain a routing decision, answer through the router, list models, show usage."""

from __future__ import annotations

from typing import Any, Literal

from mcp.server.mcpserver import Context, MCPServer
from pydantic import BaseModel, Field

from mcp_servers.context import READ_ONLY, ServerDeps, caller_tenant, client_errors
from operations import models


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=100_000)


class RouteDecision(BaseModel):
    tier: str
    stage: str = Field(description="policy, hint, rule or classifier")
    reason: str
    score: float | None = Field(description="Classifier P(complex), when the classifier decided.")
    threshold: float | None


class Answer(BaseModel):
    text: str
    decision: RouteDecision
    deployment: str
    model: str
    tokens_in: int
    tokens_out: int
    usage_estimated: bool = Field(description="True when the provider reported no usage and it was counted here.")
    cost_usd: float
    ttft_s: float | None
    latency_s: float
    cached: bool
    attempts: list[str] = Field(description="Failed attempts before the answer (deployment: reason).")


class ModelInfo(BaseModel):
    name: str
    tier: str
    model: str
    health: str = Field(description="closed (healthy), open (cooling down) or half-open (probing)")
    in_flight: int
    ewma_latency_s: float | None
    price_in_per_m: float
    price_out_per_m: float


class Models(BaseModel):
    policy: str
    models: list[ModelInfo]


class Usage(BaseModel):
    tiers: dict[str, dict[str, float]] = Field(description="Per tier: calls, tokens_in, tokens_out, cost_usd.")
    total_cost_usd: float


def add_router_tools(server: MCPServer, deps: ServerDeps) -> None:
    @server.tool(
        description="Explain which model tier would answer, and why, without calling a model.", annotations=READ_ONLY
    )
    async def route(
        text: str = Field(min_length=1, max_length=100_000),
        hint: str | None = Field(default=None, description="Ask for a tier (small, large)."),
        needs_tools: bool = False,
    ) -> RouteDecision:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            decision = await models.route(services, tenant, text, hint=hint, needs_tools=needs_tools)
            return RouteDecision(**decision.explain())  # type: ignore[arg-type]

    @server.tool(description="Route and answer; streams the answer as progress notifications while it is generated.")
    async def complete(
        messages: list[Message] = Field(min_length=1, max_length=200),
        hint: str | None = None,
        max_tokens: int = Field(default=256, ge=1, le=8192),
        temperature: float = Field(default=0.0, ge=0, le=2),
        bypass_cache: bool = False,
        ctx: Context | None = None,
    ) -> Answer:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            sent = 0

            async def on_token(text: str) -> None:
                nonlocal sent
                sent += 1
                if ctx is not None:
                    await ctx.report_progress(sent, None, text)

            asked = [m.model_dump() for m in messages]
            done = await models.complete(
                services, tenant, asked, hint=hint, max_tokens=max_tokens, temperature=temperature,
                bypass_cache=bypass_cache, on_token=on_token,
            )  # fmt: skip
            data: dict[str, Any] = done.public()
            return Answer(**{**data, "decision": RouteDecision(**data["decision"])})

    @server.tool(
        description="The model deployments: tier, health, calls in flight, latency, prices.", annotations=READ_ONLY
    )
    async def list_models() -> Models:
        with client_errors():
            services = deps.ready()
            caller_tenant(deps)
            view = await models.fleet(services)
            infos = [ModelInfo(name=d.name, tier=d.tier, model=d.model, health=h.status, in_flight=h.in_flight,
                               ewma_latency_s=h.ewma_s, price_in_per_m=d.price_in_per_m,
                               price_out_per_m=d.price_out_per_m)
                     for d, h in view.deployments]  # fmt: skip
            return Models(policy=view.policy, models=infos)

    @server.tool(description="The caller's token usage and cost, per tier.", annotations=READ_ONLY)
    async def get_usage() -> Usage:
        with client_errors():
            services, tenant = deps.ready(), caller_tenant(deps)
            tiers = await models.usage(services, tenant)
            return Usage(tiers=tiers, total_cost_usd=round(sum(t.get("cost_usd", 0.0) for t in tiers.values()), 8))
