"""`orchestrion ingest` takes real folders: any file name gets a valid, stable, unique doc id; hidden files
and unsupported types are skipped with one summary line. Driven as a user runs it (a real CLI process on the
session's Redis, Weaviate and worker), on a generated folder of awkward names and on the Python 3.11 library
documentation that Debian ships (`python3.11-doc`, installed by .ci/run)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from core.errors import InvalidInputError
from orchestrion.knowledge import files_under
from rag.doc_ids import DOC_ID, doc_id_for_path
from rag.services import RagServices

DEBIAN_LIBRARY = Path("/usr/share/doc/python3.11/html/library")
LIMIT = 10 * 1024 * 1024
LONG = "a very long name that goes on " * 8  # 240 characters: near the 255-byte limit of a file name


def _debian_library() -> Path:
    if not (DEBIAN_LIBRARY / "__future__.html").is_file():
        raise AssertionError(f"{DEBIAN_LIBRARY} is missing: install the Debian package python3.11-doc")
    return DEBIAN_LIBRARY


def _awkward_folder(root: Path) -> dict[str, str]:
    """A folder of awkward names; returns each file to be ingested (path under root) -> its first line."""
    files = {
        "__init__.md": "Leading underscores.",
        "_private.txt": "One leading underscore.",
        "meeting notes 2024.md": "Spaces in the name.",
        "Über café.md": "Accents.",
        "日本語のメモ.txt": "No ASCII letter at all.",
        "日本語のメモ 2.txt": "No ASCII letter at all, a second one.",
        "-dash first.md": "A leading dash.",
        f"{LONG}.md": "A name near the file system's limit.",
        "__future__.html": "<html><head><title>Future</title></head><body><p>Future statements.</p></body></html>",
        "future__.html": "<html><head><title>Not future</title></head><body><p>Alike once valid.</p></body></html>",
        "_nested dir/ünïcödé sub/__deep__.md": "Nested awkward folders.",
        f"_nested dir/{LONG[:200]}/{LONG[:200]}.md": "Deep and long.",
        "plain/README.md": "An already valid path.",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text if name.endswith(".html") else f"# {Path(name).stem}\n\n{text}\n")
    skipped = {".hidden.md": "x", ".git/config.md": "x", "logo.png": "x", "app.js": "x", "more.js": "x",
               "Makefile": "x", "empty.md": ""}  # fmt: skip
    for name, text in skipped.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return files


def test_every_awkward_name_gets_a_valid_stable_unique_doc_id(tmp_path: Path) -> None:
    files = _awkward_folder(tmp_path)
    found = files_under([tmp_path], LIMIT)

    ids = {path.relative_to(tmp_path).as_posix(): doc_id for path, doc_id in found.files}
    assert sorted(ids) == sorted(files)
    assert all(DOC_ID.match(i) for i in ids.values()), ids
    assert len(set(ids.values())) == len(ids)  # __future__.html and future__.html stay two documents
    assert ids["plain/README.md"] == "plain/README.md" and ids["future__.html"] == "future__.html"
    assert re.fullmatch(r"future__\.html@[0-9a-f]{10}", ids["__future__.html"]), ids["__future__.html"]
    assert re.fullmatch(r"Uber-cafe\.md@[0-9a-f]{10}", ids["Über café.md"]), ids["Über café.md"]
    assert ids == {p.relative_to(tmp_path).as_posix(): i for p, i in files_under([tmp_path], LIMIT).files}
    assert found.summary() == "skipped 7 file(s) in the folder(s): 2 .js, 2 hidden, 1 .png, 1 empty, 1 no extension"


def test_a_file_named_itself_is_ingested_or_refused_with_its_reason(tmp_path: Path) -> None:
    (tmp_path / ".hidden.md").write_text("# Hidden\n\nNamed, so ingested.")
    (tmp_path / "logo.png").write_bytes(b"\x89PNG")
    [(_, doc_id)] = files_under([tmp_path / ".hidden.md"], LIMIT).files
    assert DOC_ID.match(doc_id)
    with pytest.raises(InvalidInputError, match=r"logo\.png: unsupported type '\.png' \(supported: "):
        files_under([tmp_path / "logo.png"], LIMIT)
    (tmp_path / "only").mkdir()
    (tmp_path / "only" / "a.js").write_text("x")
    with pytest.raises(InvalidInputError, match=r"no documents found .*; skipped 1 file\(s\) in the folder\(s\): 1 \."):
        files_under([tmp_path / "only"], LIMIT)


def test_the_debian_python_library_folder_gets_317_valid_unique_ids() -> None:
    library = _debian_library()
    found = files_under([library], LIMIT)
    ids = [doc_id for _, doc_id in found.files]
    assert len(ids) == len(list(library.glob("*.html"))) >= 300
    assert all(DOC_ID.match(i) for i in ids) and len(set(ids)) == len(ids)
    assert doc_id_for_path(("__future__.html",)) in ids and "asyncio.html" in ids


def _cli(env: dict[str, str], *args: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "orchestrion", *args],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**env, "COLUMNS": "250"},
    )
    return done.returncode, done.stdout + done.stderr


def _stored(rag: RagServices, tenant: str) -> dict[str, tuple[str, str]]:
    """doc id -> (source, title) of every document the tenant has."""
    return {d.doc_id: (d.source, d.title) for d in rag.store.list_documents(tenant, 1000, 0)}


@pytest.fixture
def cli_tenant(rag: RagServices) -> str:
    from orchestrion.knowledge import provision

    name = f"cli-{uuid.uuid4().hex[:8]}"
    provision(rag, name)
    return name


def test_cli_ingests_a_folder_of_awkward_names(
    rag: RagServices, cli_tenant: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    files = _awkward_folder(tmp_path)
    code, out = _cli(stack_env, "ingest", str(tmp_path), "--tenant", cli_tenant)
    assert code == 0, out
    assert "skipped 7 file(s) in the folder(s): 2 .js, 2 hidden, 1 .png, 1 empty, 1 no extension" in out, out
    assert f"{len(files)} document(s) ingested" in out and "Traceback" not in out, out

    stored = _stored(rag, cli_tenant)
    by_source = {source: (doc_id, title) for doc_id, (source, title) in stored.items()}
    assert sorted(by_source) == sorted(str(tmp_path / name) for name in files)  # the original path is the source
    assert by_source[str(tmp_path / "__future__.html")][1] == "Future"
    assert by_source[str(tmp_path / "_private.txt")][1] == "_private"  # the title from the name as written
    assert by_source[str(tmp_path / "meeting notes 2024.md")][1] == "meeting notes 2024"

    # The same folder again: the same ids, so the same documents (answered by their finished jobs).
    code, out = _cli(stack_env, "ingest", str(tmp_path), "--tenant", cli_tenant)
    assert code == 0 and f"{len(files)} document(s) ingested" in out, out
    assert _stored(rag, cli_tenant) == stored


def test_cli_ingests_the_debian_pages_whose_names_it_refused(
    rag: RagServices, cli_tenant: str, stack_env: dict[str, str]
) -> None:
    """The bounded part of the Debian folder: the pages with leading underscores (the CLI refused the whole
    folder over `__future__.html`), named one by one as real files of the installed package."""
    library = _debian_library()
    pages = sorted(library.glob("_*.html"))
    assert {p.name for p in pages} >= {"__future__.html", "__main__.html", "_thread.html"}
    code, out = _cli(stack_env, "ingest", *map(str, pages), "--tenant", cli_tenant)
    assert code == 0 and f"{len(pages)} document(s) ingested" in out, out
    stored = _stored(rag, cli_tenant)
    assert sorted(source for source, _ in stored.values()) == sorted(map(str, pages))
    assert any("__future__" in title for _, title in stored.values()), stored


@pytest.mark.drill
@pytest.mark.timeout(3600)  # 317 pages, 28 MB of HTML: many minutes of embedding on 2 shared cores
def test_cli_ingests_the_whole_debian_python_library_folder(
    rag: RagServices, cli_tenant: str, stack_env: dict[str, str]
) -> None:
    library = _debian_library()
    pages = sorted(library.glob("*.html"))
    code, out = _cli(stack_env, "ingest", str(library), "--tenant", cli_tenant)
    assert code == 0 and f"{len(pages)} document(s) ingested" in out and "failed" not in out, out
    stored = _stored(rag, cli_tenant)
    assert sorted(source for source, _ in stored.values()) == sorted(map(str, pages))
    assert os.path.join(library, "__future__.html") in {source for source, _ in stored.values()}
