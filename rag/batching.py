"""Concurrent callers' texts embedded together, in one model call.

A search embeds one short query. Run one at a time, the model spends most of its time
on per-call overhead (14 ms wall / 28 ms CPU for one query on 2 cores, against 3.5 ms /
7 ms per query in a batch of 16, see bench/RESULTS.md); run side by side from many
request threads, every call also starts its own intra-op threads and they fight over
the cores. So every caller queues its texts and one dispatcher thread embeds whatever
is waiting in one call. Nothing waits for a batch to fill: a lone caller is embedded at
once, and callers arriving while the model is busy form the next batch, so batches grow
with load and not with latency.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # rag.embedding builds this class: a runtime import would be circular
    from rag.embedding import Embedder, EmbeddingSpec


class BatchingEmbedder:
    def __init__(self, inner: Embedder, max_batch: int) -> None:
        self._inner = inner
        self._max_batch = max_batch
        self._waiting: deque[tuple[list[str], Future[list[list[float]]]]] = deque()
        self._ready = threading.Condition()
        self._dispatcher: threading.Thread | None = None
        self.calls = 0  # model calls made, for tests and benchmarks: texts / calls is the mean batch

    @property
    def spec(self) -> EmbeddingSpec:
        return self._inner.spec

    def close(self) -> None:
        self._inner.close()  # the dispatcher thread stays, idle, for a later call

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        done: Future[list[list[float]]] = Future()
        with self._ready:
            self._waiting.append((list(texts), done))
            if self._dispatcher is None:  # started on first use: no thread exists at import or before a fork
                self._dispatcher = threading.Thread(target=self._dispatch, name="embed-batcher", daemon=True)
                self._dispatcher.start()
            self._ready.notify()
        return done.result()

    def _next_batch(self) -> list[tuple[list[str], Future[list[list[float]]]]]:
        """Everything waiting, up to max_batch texts (always at least one caller, however large)."""
        with self._ready:
            while not self._waiting:
                self._ready.wait()
            batch = [self._waiting.popleft()]
            size = len(batch[0][0])
            while self._waiting and size + len(self._waiting[0][0]) <= self._max_batch:
                texts, done = self._waiting.popleft()
                batch.append((texts, done))
                size += len(texts)
            return batch

    def _dispatch(self) -> None:
        # Imported here, on first use: a worker must set up multiprocess metrics before importing them.
        from observability.instruments import EMBED_BATCH, EMBED_SECONDS

        while True:
            batch = self._next_batch()
            texts = [text for caller_texts, _ in batch for text in caller_texts]
            started = time.perf_counter()
            try:
                vectors = self._inner.embed(texts)
                self.calls += 1
                EMBED_SECONDS.observe(time.perf_counter() - started)
                EMBED_BATCH.observe(len(texts))
            except BaseException as error:  # noqa: BLE001 - each waiting caller gets it; the dispatcher lives on
                for _, done in batch:
                    done.set_exception(error)
                continue
            start = 0
            for caller_texts, done in batch:
                done.set_result(vectors[start : start + len(caller_texts)])
                start += len(caller_texts)
