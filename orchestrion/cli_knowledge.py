"""CLI commands for the knowledge base: tenants, ingest, search, reindex."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from orchestrion.cli import _clear_errors, _settings, app, console
from rag.services import RagServices

tenants = typer.Typer(help="Provision tenants and manage their bearer tokens.", no_args_is_help=True)
app.add_typer(tenants, name="tenants")
TenantOption = Annotated[str | None, typer.Option(help="Tenant (default: ORCHESTRION_TENANTS__DEFAULT).")]


@contextmanager
def _rag() -> Iterator[RagServices]:
    from workers.client import open_rag_with_queue

    rag, _queue = open_rag_with_queue(_settings())
    try:
        yield rag
    finally:
        rag.close()


@tenants.command("add")
@_clear_errors
def tenants_add(name: str) -> None:
    """Provision a tenant: its own Weaviate tenant (isolated shard) and registry entry."""
    from orchestrion.knowledge import provision

    with _rag() as rag:
        created = provision(rag, name)
    console.print(f"tenant {name!r} " + ("created" if created else "already existed; its storage is checked"))


@tenants.command("list")
@_clear_errors
def tenants_list() -> None:
    """List tenants and their tokens (by fingerprint; tokens themselves are never stored)."""
    from core.tenancy import tenant_registry

    registry = tenant_registry(_settings())
    tokens = registry.tokens()
    for name in registry.tenants():
        prints = [f"{t.fingerprint} ({t.label or 'no label'})" for t in tokens if t.tenant == name]
        console.print(f"{name}: {len(prints)} token(s) {', '.join(prints)}")


@tenants.command("token")
@_clear_errors
def tenants_token(name: str, label: Annotated[str, typer.Option(help="What the token is for.")] = "") -> None:
    """Issue a bearer token for a tenant; it is printed once (stdout) and stored only as a digest."""
    from core.tenancy import tenant_registry

    print(tenant_registry(_settings()).issue_token(name, label))


@tenants.command("revoke")
@_clear_errors
def tenants_revoke(fingerprint: str) -> None:
    """Revoke a token by its fingerprint (see `tenants list`)."""
    from core.tenancy import tenant_registry

    info = tenant_registry(_settings()).revoke(fingerprint)
    console.print(f"revoked {info.fingerprint} of tenant {info.tenant!r}")


@tenants.command("remove")
@_clear_errors
def tenants_remove(
    name: str, yes: Annotated[bool, typer.Option("--yes", help="Confirm: deletes all the tenant's data.")] = False
) -> None:
    """Delete a tenant, all its documents and all its tokens."""
    if not yes:
        console.print(f"this deletes every document of {name!r}; run again with --yes to confirm")
        raise typer.Exit(1)
    from orchestrion.knowledge import remove_tenant

    with _rag() as rag:
        remove_tenant(rag, name)
    console.print(f"tenant {name!r} removed")


@tenants.command("offload")
@_clear_errors
def tenants_offload(
    idle: Annotated[
        float | None, typer.Option(help="Seconds unused (default: ORCHESTRION_RAG__TENANT_IDLE_OFFLOAD_S).")
    ] = None,
) -> None:
    """Set idle tenants INACTIVE in Weaviate (files closed); their next use wakes them. The API server
    does this by itself every few minutes."""
    from rag.activity import offload_idle

    with _rag() as rag:
        done = offload_idle(rag.store, rag.activity, rag.settings.rag.tenant_idle_offload_s if idle is None else idle)
    console.print(f"{len(done)} tenant(s) offloaded" + (f": {', '.join(done)}" if done else ""))


@app.command()
@_clear_errors
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders (txt, md, html, pdf).")],
    tenant: TenantOption = None,
    tag: Annotated[list[str] | None, typer.Option(help="Tag for every document (repeatable).")] = None,
) -> None:
    """Ingest documents through the ingest queue, with a progress bar, and report each failure."""
    from orchestrion.knowledge import files_under, ingest_files, report_jobs

    settings = _settings()
    found = files_under(paths, settings.rag.max_document_bytes)
    if found.skipped:
        console.print(found.summary())
    with _rag() as rag:
        jobs = ingest_files(rag, tenant or settings.tenants.default, found.files, console, tags=tag or [])
    if report_jobs(jobs, console):
        raise typer.Exit(1)


@app.command()
@_clear_errors
def search(
    query: str,
    tenant: TenantOption = None,
    mode: Annotated[str, typer.Option(help="hybrid, vector or keyword.")] = "hybrid",
    k: Annotated[int, typer.Option(help="How many results.")] = 5,
    tag: Annotated[list[str] | None, typer.Option(help="Only documents with any of these tags.")] = None,
) -> None:
    """Search a tenant's documents and print the passages with their citations."""
    from orchestrion.knowledge import print_hits, run_search, search_via_api
    from rag.search import SearchRequest

    settings = _settings()
    filters = {"field": "tags", "op": "any_of", "value": tag} if tag else None
    request = SearchRequest.model_validate({"query": query, "mode": mode, "k": k, "filters": filters})
    chosen = tenant or settings.tenants.default
    hits = search_via_api(settings, chosen, request)
    if hits is None:
        with console.status("loading the embedding model in this process…"), _rag() as rag:
            hits = run_search(rag, chosen, request)
    print_hits(hits, console, query)


@app.command()
@_clear_errors
def ask(
    question: str,
    thread: Annotated[
        str | None, typer.Option(help="Continue this thread (its id is printed after an answer).")
    ] = None,
) -> None:
    """Ask the agents (planner, retriever, executor) about the default tenant's documents, through the running
    stack; prints the answer with its numbered citations."""
    from orchestrion.asking import ask as ask_agents
    from orchestrion.asking import local_endpoint, print_answer

    url, token = local_endpoint(_settings())
    print_answer(ask_agents(url, token, question, thread, console), console)


@app.command()
@_clear_errors
def reindex(
    tenant: TenantOption = None,
    all_tenants: Annotated[bool, typer.Option("--all", help="Every tenant in the registry.")] = False,
) -> None:
    """Re-embed tenants into the configured embedding model's collection (after changing models)."""
    from rich.progress import Progress, TaskID

    from rag.reindex import reindex_tenant

    settings = _settings()
    with _rag() as rag:
        names = rag.registry.tenants() if all_tenants else [tenant or settings.tenants.default]
        with Progress(console=console) as progress:
            for name in names:
                bar = progress.add_task(f"reindexing {name}", total=None)

                def advance(done: int, total: int, bar: TaskID = bar) -> None:
                    progress.update(bar, completed=done, total=total)

                moved = reindex_tenant(rag.store, rag.embedder, rag.ingest.chunker, name, advance)
                progress.update(bar, description=f"{name}: {moved} chunks on {rag.embedder.spec.model}")
