"""What `orchestrion up` does once the stack is healthy: the default tenant, its token, the sample
corpus on first run, and one search answered with citations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from rich.console import Console

from core.errors import OrchestrionError
from core.settings import Settings
from core.tenancy import write_private
from orchestrion.knowledge import files_under, ingest_files, print_hits, provision, report_jobs
from rag.store import SearchHit
from workers.client import open_rag_with_queue

DEMO_QUESTION = "How do idempotency keys prevent a double charge when a client retries?"


def sample_corpus() -> Path:
    """The corpus shipped with the repo (or, in a wheel, inside the package)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "samples" / "corpus", here / "sample_corpus"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("the sample corpus is missing from this installation")


def local_token(settings: Settings, issue: Callable[[], str]) -> str:
    """The default tenant's token for local HTTP clients, kept (0600) in the data dir."""
    path = settings.data_dir / "local-token"
    if path.is_file():
        return path.read_text().strip()
    token: str = issue()
    write_private(path, token + "\n")
    return token


def first_run(
    settings: Settings, api_url: str, console: Console, *, samples: bool = True, ask_agents: bool = True
) -> str:
    """Provision the default tenant, ingest the samples if it has no documents, show a cited search.
    Returns the local bearer token."""
    tenant = settings.tenants.default
    rag, _queue = open_rag_with_queue(settings)
    try:
        if provision(rag, tenant):
            console.print(f"[green]✓[/green] tenant {tenant!r} provisioned")
        token = local_token(settings, lambda: rag.registry.issue_token(tenant, "local (orchestrion up)"))
        if rag.registry.tenant_for_token(token) != tenant:  # revoked since: issue a fresh one
            (settings.data_dir / "local-token").unlink()
            token = local_token(settings, lambda: rag.registry.issue_token(tenant, "local (orchestrion up)"))
        if samples and not rag.store.list_documents(tenant, 1, 0):
            console.print("first run: ingesting the sample corpus through the ingest queue")
            found = files_under([sample_corpus()], settings.rag.max_document_bytes)
            report_jobs(ingest_files(rag, tenant, found.files, console), console)
    finally:
        rag.close()
    response = httpx.post(
        f"{api_url}/v1/search",
        json={"query": DEMO_QUESTION, "k": 3},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    response.raise_for_status()
    print_hits([SearchHit(**h) for h in response.json()["hits"]], console, DEMO_QUESTION)
    if ask_agents:
        from orchestrion.asking import ask, print_answer

        console.print(f"[bold]The agents, asked over MCP:[/bold] {DEMO_QUESTION}")
        try:
            print_answer(ask(f"{api_url}/mcp", token, DEMO_QUESTION, None, console), console)
        except OrchestrionError as exc:  # the stack is up either way; say why the agents could not answer
            console.print(f"[yellow]the agents could not answer:[/yellow] {exc}")
    return token
