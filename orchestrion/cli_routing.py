"""CLI commands for the model router: train its classifier, explain a decision, show usage."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from orchestrion.cli import _clear_errors, _settings, app, console

router_app = typer.Typer(help="The model router: train the classifier, explain decisions.", no_args_is_help=True)
app.add_typer(router_app, name="router")


@router_app.command("train")
@_clear_errors
def train(
    target_recall: Annotated[
        float,
        typer.Option(
            min=0.5, max=1.0, help="Share of complex requests kept on large, on scores of categories held out."
        ),
    ] = 0.95,
) -> None:
    """Train the complexity classifier on the training files (routing/data/requests*.jsonl; never on
    independent.jsonl) and write routing/data/classifier.json."""
    from rag.embedding import LocalEmbedder
    from routing.classifier import ARTEFACT, training_examples
    from routing.classifier import train as fit

    examples = training_examples()
    embedder = LocalEmbedder()
    with console.status(f"embedding {len(examples)} examples, fitting, cross-validating the threshold"):
        model = fit(embedder.embed, embedder.spec.model, examples, target_recall)
    model.save()
    console.print(f"wrote {ARTEFACT} (threshold {model.threshold:.4f})")
    print(json.dumps(model.metrics, indent=2))


@router_app.command("route")
@_clear_errors
def route(text: str, hint: Annotated[str | None, typer.Option(help="Caller's tier hint.")] = None) -> None:
    """Explain which tier the router picks for TEXT, and why (nothing is sent to a model)."""
    from rag.embedding import LocalEmbedder
    from routing.classifier import Classifier
    from routing.router import Router
    from routing.rules import RuleSettings

    embedder = LocalEmbedder()
    router = Router(RuleSettings(), Classifier.load(), embedder.embed)
    print(json.dumps(router.decide(text, hint=hint).explain(), indent=2))


@router_app.command("usage")
@_clear_errors
def usage(tenant: Annotated[str | None, typer.Option(help="Tenant (default: the local default).")] = None) -> None:
    """A tenant's model calls, tokens and cost per tier (from the shared ledger in Redis)."""
    import asyncio

    from core.stack import resolve_endpoints
    from routing.ledger import Ledger
    from routing.redis_loop import LoopRedis

    settings = _settings()
    redis_loop = LoopRedis(resolve_endpoints(settings).redis_url)
    name = tenant or settings.tenants.default

    async def read() -> dict[str, dict[str, float]]:
        try:
            return await Ledger(redis_loop, settings.redis.key_prefix).usage(name)
        finally:
            await redis_loop.aclose()

    tiers = asyncio.run(read())
    total = sum(t.get("cost_usd", 0.0) for t in tiers.values())
    print(json.dumps({"tenant": name, "tiers": tiers, "total_cost_usd": total}, indent=2))


@router_app.command("models")
@_clear_errors
def models() -> None:
    """The configured deployments with their live health, load and latency."""
    import asyncio

    from core.stack import resolve_endpoints
    from routing.balancer import FleetState, Health
    from routing.redis_loop import LoopRedis
    from routing.services import configured_fleet

    settings = _settings()
    fleet = configured_fleet(settings)
    state = FleetState(LoopRedis(resolve_endpoints(settings).redis_url), settings.redis.key_prefix, fleet.health)

    async def snapshot() -> dict[str, Health]:
        try:
            return await state.snapshot([d.name for d in fleet.deployments])
        finally:
            await state.aclose()

    health = asyncio.run(snapshot())
    for d in fleet.deployments:
        h = health[d.name]
        console.print(f"{d.name:24} {d.tier:6} {d.model:28} {h.status:9} in-flight {h.in_flight:3} "
                      f"ewma {h.ewma_s or 0:.3f}s  ${d.price_in_per_m}/${d.price_out_per_m} per M")  # fmt: skip
