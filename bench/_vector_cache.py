"""Vectors kept on disk between benchmark runs, so a quality benchmark does not re-embed a corpus each time.

A vector depends only on the model and the text, so a cached one is the vector the model would give (the
benchmarks that measure embedding speed never use this). Keyed by SHA-256 of the model name and the text;
the file lives under ~/.cache/orchestrion/bench and may be deleted at any time.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag.embedding import CachingEmbedder, Embedder

DEFAULT_PATH = Path.home() / ".cache" / "orchestrion" / "bench" / "vectors.sqlite"


class DiskCachedEmbedder(CachingEmbedder):
    def __init__(self, inner: Embedder, path: Path = DEFAULT_PATH) -> None:
        super().__init__(inner)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")

    def key(self, text: str) -> str:
        return hashlib.sha256(f"{self.inner.spec.model}\0{text}".encode()).hexdigest()

    def _lookup(self, texts: Sequence[str]) -> list[list[float] | None]:
        keys = [self.key(t) for t in texts]
        found: dict[str, list[float]] = {}
        for start in range(0, len(keys), 500):
            part = keys[start : start + 500]
            rows = self._db.execute(f"SELECT key, vector FROM vectors WHERE key IN ({','.join('?' * len(part))})", part)
            found.update({k: np.frombuffer(v, dtype=np.float32).astype(float).tolist() for k, v in rows})
        return [found.get(k) for k in keys]

    def _store(self, texts: Sequence[str], vectors: Sequence[list[float]]) -> None:
        rows = [(self.key(t), np.asarray(v, dtype=np.float32).tobytes()) for t, v in zip(texts, vectors, strict=True)]
        self._db.executemany("INSERT OR REPLACE INTO vectors VALUES (?, ?)", rows)
        self._db.commit()

    def close(self) -> None:
        self._db.close()
        super().close()
