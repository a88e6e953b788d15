"""The shapes a document takes on its way in: raw input, parsed sections, chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class DocType(StrEnum):
    TEXT = "text"
    MARKDOWN = "markdown"
    HTML = "html"
    PDF = "pdf"


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path, e.g. ("Install", "On Linux")."""

    heading_path: tuple[str, ...]
    text: str


@dataclass(frozen=True)
class ParsedDocument:
    title: str
    doc_type: DocType
    sections: list[Section] = field(default_factory=list)


@dataclass(frozen=True)
class ChunkText:
    """One chunk: `text` is what a citation shows; `embed_text` adds the title and headings
    so the vector knows where the passage sits; its token count respects the model's limit."""

    index: int
    text: str
    embed_text: str
    heading_path: tuple[str, ...]
    token_count: int
