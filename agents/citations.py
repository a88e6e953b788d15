"""Numbered citations: evidence shown as [1]..[n]; a citation the answer makes to nothing shown is removed."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


def clean_citations(text: str, count: int) -> tuple[str, list[int]]:
    """The text with every citation to a number outside 1..count removed, and the numbers it still cites
    (in order of first use)."""
    used: list[int] = []

    def keep(match: re.Match[str]) -> str:
        valid = [n for n in (int(x) for x in match.group(1).split(",")) if 1 <= n <= count]
        for n in valid:
            if n not in used:
                used.append(n)
        return "[" + ", ".join(map(str, valid)) + "]" if valid else ""

    cleaned = _CITATION.sub(keep, text)
    cleaned = re.sub(r"[ \t]+([.,;:!?])", r"\1", cleaned)  # a removed citation leaves no space before punctuation
    return re.sub(r"[ \t]{2,}", " ", cleaned).strip(), used


def label(item: dict[str, Any]) -> str:
    if item.get("kind") == "tool":
        return f"tool {item.get('title')}"
    headings = [h for h in item.get("heading_path") or [] if h != item.get("title")]
    return " › ".join([str(item.get("title") or item.get("doc_id")), *headings])


def citation_list(evidence: Sequence[dict[str, Any]], numbers: Sequence[int]) -> list[dict[str, Any]]:
    """The citations of an answer: for each number cited, what it points at."""
    out = []
    for n in numbers:
        item = evidence[n - 1]
        out.append(
            {
                "n": n,
                "kind": item.get("kind", "document"),
                "doc_id": item.get("doc_id"),
                "title": item.get("title"),
                "heading_path": list(item.get("heading_path") or []),
                "chunk_index": item.get("chunk_index"),
                "score": item.get("score"),
                "source": item.get("source"),
                "label": label(item),
            }
        )
    return out
