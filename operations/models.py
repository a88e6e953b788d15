"""Model routing and completion for one tenant: explain a decision, answer, list the fleet, show usage."""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from operations.services import Services
from routing.balancer import Health
from routing.client import Completion, OnToken
from routing.fleet import Deployment
from routing.router import Decision


@dataclass(frozen=True)
class FleetView:
    policy: str
    deployments: list[tuple[Deployment, Health]]


async def route(
    services: Services, tenant: str, text: str, *, hint: str | None = None, needs_tools: bool = False
) -> Decision:
    models = services.require_models()
    policy = models.fleet.policy_for(tenant)
    return await anyio.to_thread.run_sync(
        lambda: models.router.decide(text, hint=hint, needs_tools=needs_tools, policy=policy)
    )


async def complete(
    services: Services,
    tenant: str,
    messages: list[dict[str, str]],
    *,
    hint: str | None = None,
    max_tokens: int = 256,
    temperature: float = 0.0,
    bypass_cache: bool = False,
    on_token: OnToken | None = None,
) -> Completion:
    models = services.require_models()
    return await models.complete(
        tenant, messages, hint=hint, max_tokens=max_tokens, temperature=temperature, bypass_cache=bypass_cache,
        on_token=on_token,
    )  # fmt: skip


async def fleet(services: Services) -> FleetView:
    models = services.require_models()
    health = await models.balancer.state.snapshot([d.name for d in models.fleet.deployments])
    return FleetView(models.fleet.policy, [(d, health[d.name]) for d in models.fleet.deployments])


async def usage(services: Services, tenant: str) -> dict[str, dict[str, float]]:
    return await services.require_models().ledger.usage(tenant)
