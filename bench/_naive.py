"""The naive retrieval pipeline Orchestrion must beat, and plain bm25s over any passages.

Naive: BeautifulSoup's text of the whole page (menus and all), windows of 180 words every 150 words, the
same embedding model, brute-force cosine, bm25s (English stopwords), and reciprocal rank fusion (k=60) of
the two lists: what a weekend RAG prototype does.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
from bs4 import BeautifulSoup

from rag.embedding import Embedder

WINDOW_WORDS = 180
STRIDE_WORDS = 150
RRF_K = 60
DEPTH = 50
EMBED_BATCH = 256


@dataclass(frozen=True)
class Passage:
    doc_id: str
    text: str


def windows(pages: dict[str, bytes]) -> list[Passage]:
    out = []
    for doc_id, content in pages.items():
        words = BeautifulSoup(content, "html.parser").get_text(" ").split()
        for start in range(0, max(1, len(words) - WINDOW_WORDS + STRIDE_WORDS), STRIDE_WORDS):
            out.append(Passage(doc_id, " ".join(words[start : start + WINDOW_WORDS])))
    return out


class Bm25:
    """bm25s over passages; `search` gives passage indexes, best first."""

    def __init__(self, texts: Sequence[str]) -> None:
        self._index = bm25s.BM25()
        self._index.index(bm25s.tokenize(list(texts), stopwords="en", show_progress=False), show_progress=False)

    def search(self, query: str, depth: int = DEPTH) -> list[int]:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        found, _ = self._index.retrieve(tokens, k=depth, show_progress=False)
        return [int(i) for i in found[0]]


class NaivePipeline:
    def __init__(self, passages: list[Passage], embedder: Embedder) -> None:
        self.passages = passages
        self._embedder = embedder
        texts = [p.text for p in passages]
        vectors: list[list[float]] = []
        for start in range(0, len(texts), EMBED_BATCH):  # batches: a disk cache keeps each as it is done
            vectors += embedder.embed(texts[start : start + EMBED_BATCH])
        self._vectors = np.asarray(vectors, dtype=np.float32)
        self._bm25 = Bm25([p.text for p in passages])

    def search(self, query: str, mode: str) -> list[str]:
        """Doc ids of the best passages, best first."""
        by_vector: list[int] = []
        if mode != "keyword":
            query_vector = np.asarray(self._embedder.embed([query])[0], dtype=np.float32)
            by_vector = [int(i) for i in np.argsort(-(self._vectors @ query_vector))[:DEPTH]]
        if mode == "vector":
            ranked = by_vector
        elif mode == "keyword":
            ranked = self._bm25.search(query)
        else:
            fused: dict[int, float] = defaultdict(float)
            for ranking in (by_vector, self._bm25.search(query)):
                for rank, index in enumerate(ranking, 1):
                    fused[index] += 1 / (RRF_K + rank)
            ranked = sorted(fused, key=lambda i: -fused[i])
        return [self.passages[i].doc_id for i in ranked]
