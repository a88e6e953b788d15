"""Concurrent embedding calls share model calls, and each caller still gets its own vectors."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rag.batching import BatchingEmbedder
from rag.embedding import EmbeddingSpec, LocalEmbedder

QUERIES = [f"how does the payment service retry refund number {i} after a timeout" for i in range(24)]


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


def _together(embedder: BatchingEmbedder, requests: Sequence[list[str]]) -> list[list[list[float]]]:
    start = threading.Barrier(len(requests))

    def call(texts: list[str]) -> list[list[float]]:
        start.wait()
        return embedder.embed(texts)

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(call, requests))


def test_concurrent_callers_share_model_calls_and_get_their_own_vectors(local: LocalEmbedder) -> None:
    batcher = BatchingEmbedder(local, max_batch=32)
    requests = [[q] for q in QUERIES[:16]] + [QUERIES[16:20], QUERIES[20:24]]

    answers = _together(batcher, requests)

    # 18 callers, 24 texts: while the first call runs, the others queue and go in together.
    assert batcher.calls <= 6
    for texts, vectors in zip(requests, answers, strict=True):
        assert len(vectors) == len(texts)
        np.testing.assert_allclose(vectors, local.embed(texts), atol=1e-5)


def test_a_batch_never_exceeds_the_maximum_unless_one_caller_does(local: LocalEmbedder) -> None:
    seen: list[int] = []

    class Recording:
        spec = local.spec

        def embed(self, texts: Sequence[str]) -> list[list[float]]:
            seen.append(len(texts))
            return local.embed(texts)

    batcher = BatchingEmbedder(Recording(), max_batch=4)
    answers = _together(batcher, [QUERIES[:10], *([q] for q in QUERIES[10:20])])

    np.testing.assert_allclose(answers[0], local.embed(QUERIES[:10]), atol=1e-5)
    assert sum(seen) == 20
    assert all(size <= 4 for size in seen if size != 10), seen


class Failing:
    spec = EmbeddingSpec("broken", 3, True)

    def __init__(self) -> None:
        self.fail = True

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.fail:
            raise ConnectionError("embedding endpoint unreachable")
        return [[1.0, 0.0, 0.0] for _ in texts]


def test_a_failed_model_call_reaches_every_waiting_caller_and_the_next_call_works() -> None:
    inner = Failing()
    batcher = BatchingEmbedder(inner, max_batch=8)

    with pytest.raises(ConnectionError, match="unreachable"):
        batcher.embed(["a"])
    with ThreadPoolExecutor(4) as pool:
        failures = [f.exception() for f in [pool.submit(batcher.embed, [t]) for t in "abcd"]]
    assert all(isinstance(e, ConnectionError) for e in failures)

    inner.fail = False
    assert batcher.embed(["b", "c"]) == [[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]
