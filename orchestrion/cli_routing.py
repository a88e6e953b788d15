"""CLI commands for the model router: train its classifier, explain a decision, show usage."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from orchestrion.cli import _clear_errors, app, console

router_app = typer.Typer(help="The model router: train the classifier, explain decisions.", no_args_is_help=True)
app.add_typer(router_app, name="router")


@router_app.command("train")
@_clear_errors
def train(
    target_recall: Annotated[
        float, typer.Option(min=0.5, max=1.0, help="Share of complex requests kept on large.")
    ] = 0.99,
) -> None:
    """Train the complexity classifier on routing/data/requests.jsonl and write routing/data/classifier.json."""
    from rag.embedding import LocalEmbedder
    from routing.classifier import ARTEFACT, load_examples
    from routing.classifier import train as fit

    examples = load_examples()
    embedder = LocalEmbedder()
    with console.status(f"embedding {len(examples)} examples and fitting"):
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
