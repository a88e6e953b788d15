"""Benchmark documents made at run time from real text: the Python standard library's own documentation.

`pydoc.render_doc(module, renderer=pydoc.plaintext)` of every importable public stdlib module and
submodule (PSF-licensed text of this interpreter, not shipped in the repo), keeping documents of
2-30 KB, in name order; plus the 12 documents of samples/corpus.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import pkgutil
import pydoc
import random
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "corpus"
MIN_BYTES, MAX_BYTES = 2 * 1024, 30 * 1024
# Modules with side effects on import (a browser, a GUI, printing) or no documentation of interest.
SKIP = {
    "antigravity",
    "this",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "test",
    "lib2to3",
    "ensurepip",
    "pydoc_data",
    "__main__",
    "xxsubtype",
    "xxlimited",
    "xxlimited_35",
    "msilib",
    "winreg",
    "winsound",
    "nt",
    "msvcrt",
    "sre_compile",
    "sre_parse",
    "sre_constants",
}


@dataclass(frozen=True)
class Doc:
    filename: str
    content: bytes


def _quietly_render(name: str) -> str | None:
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
            return pydoc.render_doc(module, renderer=pydoc.plaintext)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a module that does not import here is simply not in the corpus
        return None


def _module_names() -> list[str]:
    names: list[str] = []
    for top in sorted(sys.stdlib_module_names):
        if top.startswith("_") or top in SKIP:
            continue
        names.append(top)
        spec = importlib.util.find_spec(top) if _importable(top) else None
        if spec is not None and spec.submodule_search_locations:
            for info in pkgutil.iter_modules(spec.submodule_search_locations, top + "."):
                last = info.name.rsplit(".", 1)[-1]
                if not last.startswith("_") and "test" not in info.name and "idle" not in info.name:
                    names.append(info.name)
    return names


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def stdlib_docs(limit: int) -> list[Doc]:
    """Up to `limit` stdlib module documents of 2-30 KB, as .txt files named after the module."""
    docs: list[Doc] = []
    for name in _module_names():
        text = _quietly_render(name)
        if text is None:
            continue
        # The FILE section names this machine's install path: not documentation, and not portable.
        text = re.sub(r"\nFILE\n    .*\n", "\n", text)
        data = text.encode()
        if MIN_BYTES <= len(data) <= MAX_BYTES:
            docs.append(Doc(f"{name}.txt", data))
        if len(docs) >= limit:
            break
    return docs


def sample_docs() -> list[Doc]:
    return [Doc(p.name, p.read_bytes()) for p in sorted(SAMPLES.iterdir()) if p.is_file()]


def paragraphs(docs: list[Doc], min_chars: int = 80) -> list[str]:
    """Every paragraph of the documents with at least `min_chars` characters, whitespace squeezed."""
    found: list[str] = []
    for doc in docs:
        for block in re.split(r"\n\s*\n", doc.content.decode(errors="replace")):
            text = " ".join(block.replace("|", " ").split())
            if len(text) >= min_chars and "-----" not in text:
                found.append(text)
    return found


def small_markdown_docs(pool: list[str], count: int, target_chars: int, seed: int, label: str) -> list[Doc]:
    """`count` distinct small Markdown documents of about `target_chars`, from random paragraphs of `pool`."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        parts: list[str] = []
        while sum(len(p) for p in parts) < target_chars:
            parts.append(rng.choice(pool)[: target_chars // 2])
        body = "\n\n".join(parts)
        docs.append(Doc(f"{label}-{i:04d}.md", f"# {label} note {i}\n\n{body}\n".encode()))
    return docs
