"""Terminal work on the knowledge base: provision tenants, ingest files with a progress bar, search.

The CLI is the operator's adapter: it talks to Redis and Weaviate directly with the
deployment's own credentials, so unlike the API and MCP it may name a tenant.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from core.errors import BusyError, InvalidInputError, NotFoundError
from core.settings import Settings
from core.stack import StackRecord
from core.tenancy import tenant_registry
from rag.doc_ids import doc_id_for_path
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


@dataclass
class Found:
    """The files to ingest (path, doc id) and what a folder held that is skipped, by kind."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)

    def summary(self) -> str:
        """One line: how many files were skipped and of which kinds; '' when none."""
        if not self.skipped:
            return ""
        kinds = ", ".join(
            f"{count} {kind}" for kind, count in sorted(self.skipped.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        return f"skipped {self.skipped.total()} file(s) in the folder(s): {kinds}"


def files_under(paths: Iterable[Path], max_bytes: int) -> Found:
    """Each file to ingest and its doc id: its path under the folder given (`a/README.md` and `b/README.md`
    are two documents), or its name when the file itself was given, made a valid id where it is not one
    (rag/doc_ids.py). In a folder, hidden files and folders, unsupported types, empty files and files over
    `max_bytes` are skipped and counted; a file named itself is ingested or refused with the reason."""
    found = Found()
    for path in paths:
        if path.is_dir():
            _walk(path, found, max_bytes)
        elif path.is_file():
            if path.suffix.lower() not in SUPPORTED:
                raise InvalidInputError(f"{path}: unsupported type {path.suffix or '(no extension)'!r} ({_KINDS})")
            found.files.append((path, doc_id_for_path((path.name,))))
        else:
            raise InvalidInputError(f"{path} does not exist")
    if not found.files:
        raise InvalidInputError(f"no documents found ({_KINDS})" + (f"; {found.summary()}" if found.skipped else ""))
    return found


_KINDS = "supported: " + ", ".join(sorted(SUPPORTED))


def _walk(folder: Path, found: Found, max_bytes: int) -> None:
    for root, dirs, names in os.walk(folder):
        here = Path(root)
        for name in sorted(dirs):
            if name.startswith("."):
                found.skipped["hidden"] += 1
                dirs.remove(name)
            elif (here / name).is_symlink():  # os.walk does not follow it: say so, and loops are impossible
                found.skipped["links to folders (not followed)"] += 1
        dirs.sort()
        for name in sorted(names):
            file = here / name
            suffix = file.suffix.lower()
            if name.startswith("."):
                found.skipped["hidden"] += 1
            elif suffix not in SUPPORTED:
                found.skipped[suffix or "no extension"] += 1
            elif not file.is_file():
                found.skipped["not regular files"] += 1
            elif (size := file.stat().st_size) == 0:
                found.skipped["empty"] += 1
            elif size > max_bytes:
                found.skipped["over ORCHESTRION_RAG__MAX_DOCUMENT_BYTES"] += 1
            else:
                found.files.append((file, doc_id_for_path(file.relative_to(folder).parts)))


def ingest_files(
    rag: RagServices, tenant: str, files: Sequence[tuple[Path, str]], console: Console, *, tags: Sequence[str] = ()
) -> list[JobStatus]:
    """Submit every file, in parts the queue limits take (each part validated whole before it is accepted;
    a busy queue is waited for as it says), then follow the jobs with a progress bar until they end."""
    settings = rag.settings.rag
    part_size = min(settings.ingest_queue_limit, settings.ingest_tenant_queue_limit, SUBMISSION_PART)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())  # fmt: skip
    jobs: list[JobStatus] = []
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"ingesting {len(files)} document(s)", total=len(files), detail="submitting")
        for start in range(0, len(files), part_size):
            part = [
                Submission(content=f.read_bytes(), filename=f.name, doc_id=doc_id, source=str(f), tags=tuple(tags))
                for f, doc_id in files[start : start + part_size]
            ]
            jobs += _submit_when_there_is_room(rag, tenant, part, lambda detail: progress.update(bar, detail=detail))
            _show(progress, bar, rag, tenant, jobs)
        while not _show(progress, bar, rag, tenant, jobs):
            time.sleep(0.3)
    return [rag.ingest.status(tenant, j.job_id) for j in jobs]


# Documents per submission: the first jobs start while later parts are read and validated.
SUBMISSION_PART = 100


def _submit_when_there_is_room(
    rag: RagServices, tenant: str, part: Sequence[Submission], say: Callable[[str], None]
) -> list[JobStatus]:
    while True:
        try:
            return rag.ingest.submit(tenant, part)
        except BusyError as busy:
            say(f"the ingest queue is full: submitting again in {busy.retry_after_s}s")
            time.sleep(busy.retry_after_s)


def _show(progress: Progress, bar: TaskID, rag: RagServices, tenant: str, jobs: Sequence[JobStatus]) -> bool:
    """Update the bar from the jobs' states; True when every job has ended."""
    current = [rag.ingest.status(tenant, j.job_id) for j in jobs]
    finished = sum(j.state in FINAL_STATES for j in current)
    chunks = sum(j.chunks_done for j in current)
    progress.update(bar, completed=finished, detail=f"{chunks} chunks embedded")
    return finished == progress.tasks[bar].total


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
