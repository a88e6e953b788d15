"""Terminal work on the knowledge base: provision tenants, ingest files with a progress bar, search.

The CLI is the operator's adapter: it talks to Redis and Weaviate directly with the
deployment's own credentials, so unlike the API and MCP it may name a tenant.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from core.errors import InvalidInputError, NotFoundError
from core.settings import Settings
from core.stack import StackRecord
from core.tenancy import tenant_registry
from rag.ingest import Submission
from rag.jobs import FINAL_STATES, JobState, JobStatus
from rag.search import SearchRequest, search
from rag.services import RagServices
from rag.store import SearchHit

SUPPORTED = {".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf"}


def provision(rag: RagServices, tenant: str) -> bool:
    """Create the tenant in the registry and in Weaviate; False when it existed already."""
    created = rag.registry.add_tenant(tenant)
    rag.store.create_tenant(tenant)
    return created


def remove_tenant(rag: RagServices, tenant: str) -> None:
    """Access first, then data, then the name: a removal cut short is finished by running it again, and the
    name is free only once nothing of the tenant is left (a tenant added again under it starts empty)."""
    registered = rag.registry.has_tenant(tenant)
    rag.registry.revoke_all(tenant)
    stored = rag.store.delete_tenant_everywhere(tenant)
    if not registered and not stored:
        raise NotFoundError(f"no tenant {tenant!r}")
    rag.jobs.forget_tenant(tenant)
    rag.activity.forget(tenant)
    if registered:
        rag.registry.remove_tenant(tenant)


def files_under(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """Each file to ingest and its doc id: its path under the folder given (`a/README.md` and `b/README.md`
    are two documents), or its name when the file itself was given."""
    found: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUPPORTED)
            found.extend((f, _doc_id(f.relative_to(path).parts)) for f in files)
        elif path.is_file():
            found.append((path, _doc_id((path.name,))))
        else:
            raise InvalidInputError(f"{path} does not exist")
    if not found:
        raise InvalidInputError("no documents found (supported: " + ", ".join(sorted(SUPPORTED)) + ")")
    return found


def _doc_id(parts: Sequence[str]) -> str:
    """A doc id of path parts, each in the characters doc ids allow."""
    return "/".join(re.sub(r"[^A-Za-z0-9._:@-]+", "-", part).strip("-.") or "-" for part in parts)[-200:].lstrip("/")


def ingest_files(
    rag: RagServices, tenant: str, files: Sequence[tuple[Path, str]], console: Console, *, tags: Sequence[str] = ()
) -> list[JobStatus]:
    """Submit every file (all validated first), then follow the jobs with a progress bar until they end."""
    submissions = [
        Submission(content=f.read_bytes(), filename=f.name, doc_id=doc_id, source=str(f), tags=tuple(tags))
        for f, doc_id in files
    ]
    jobs = rag.ingest.submit(tenant, submissions)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"ingesting {len(jobs)} document(s)", total=len(jobs), detail="queued")
        while True:
            jobs = [rag.ingest.status(tenant, j.job_id) for j in jobs]
            finished = sum(j.state in FINAL_STATES for j in jobs)
            chunks = sum(j.chunks_done for j in jobs)
            progress.update(bar, completed=finished, detail=f"{chunks} chunks embedded")
            if finished == len(jobs):
                break
            time.sleep(0.3)
    return jobs


def report_jobs(jobs: Sequence[JobStatus], console: Console) -> int:
    """Print one line per failed job and a summary; returns the number of failures."""
    failed = [j for j in jobs if j.state == JobState.FAILED]
    for job in failed:
        console.print(f"[red]✗[/red] {escape(job.doc_id)}: {escape(job.error)}")
    written = sum(j.result.get("written", 0) for j in jobs)
    unchanged = sum(j.result.get("unchanged", 0) for j in jobs)
    console.print(
        f"[green]✓[/green] {len(jobs) - len(failed)} document(s) ingested: {written} chunks written, "
        f"{unchanged} unchanged" + (f"; {len(failed)} failed" if failed else "")
    )
    return len(failed)


def run_search(rag: RagServices, tenant: str, request: SearchRequest) -> list[SearchHit]:
    return search(rag.store, rag.embedder, tenant, request)


def search_via_api(settings: Settings, tenant: str, request: SearchRequest) -> list[SearchHit] | None:
    """The running stack's API answers with its model loaded, where this process would first spend ~20 s
    importing and loading it. Only for the default tenant, with the local token `orchestrion up` keeps: the
    API takes the tenant from the token. None when that is not possible; the caller searches in-process."""
    record = StackRecord.read(settings.data_dir)
    token_file = settings.data_dir / "local-token"
    if tenant != settings.tenants.default or record is None or "api_url" not in record.urls:
        return None
    try:
        token = token_file.read_text().strip()
        # The local token is the tenant that was the default when `up` ran, which settings may have changed.
        if tenant_registry(settings).tenant_for_token(token) != tenant:
            return None
        response = httpx.post(
            f"{record.urls['api_url']}/v1/search",
            json=request.model_dump(mode="json", exclude_none=True),
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
    except (OSError, httpx.HTTPError):
        return None
    if response.status_code != 200:  # a revoked token, a stopped API: the in-process search says what is wrong
        return None
    return [SearchHit(**hit) for hit in response.json()["hits"]]


def print_hits(hits: Sequence[SearchHit], console: Console, query: str) -> None:
    if not hits:
        console.print(f"no results for {query!r}")
        return
    table = Table(title=f"“{query}”", show_lines=True, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("passage")
    table.add_column("cite")
    for rank, hit in enumerate(hits, 1):
        headings = hit.heading_path[1:] if hit.heading_path[:1] == [hit.title] else hit.heading_path
        where = " › ".join([hit.title, *headings])
        passage = hit.text if len(hit.text) <= 400 else hit.text[:400] + "…"
        table.add_row(str(rank), passage, f"{where}\n{hit.doc_id} #{hit.chunk_index}\nscore {hit.score:.3f}")
    console.print(table)
