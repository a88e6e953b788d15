"""The local model in a child process: the same vectors, a dead child replaced, no orphan left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from core.errors import OrchestrionError
from core.settings import RagSettings
from rag.batching import BatchingEmbedder
from rag.embedding import LocalEmbedder, MemoryCachedEmbedder, build_embedder
from rag.model_process import ModelProcessEmbedder

TEXTS = ["how are refunds handled after a timeout?", "the retry policy of the payment service"]


@pytest.fixture(scope="module")
def embedder() -> Iterator[ModelProcessEmbedder]:
    model = ModelProcessEmbedder(batch_size=32, threads=1)
    yield model
    model.close()


def _child_pid(embedder: ModelProcessEmbedder) -> int:
    assert embedder._process is not None
    return embedder._process.pid


def _gone(pid: int, timeout: float = 20.0) -> bool:
    """Exited: no such process, or a zombie waiting for its parent to reap it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_child_gives_the_vectors_of_the_model_in_process(embedder: ModelProcessEmbedder) -> None:
    here = LocalEmbedder(threads=1).embed(TEXTS)
    there = embedder.embed(TEXTS)

    assert embedder.spec == LocalEmbedder().spec
    assert len(there) == 2 and len(there[0]) == 384
    np.testing.assert_allclose(np.array(there), np.array(here), atol=1e-6)
    assert _child_pid(embedder) != os.getpid()


def test_a_killed_child_is_replaced_and_the_call_still_answers(embedder: ModelProcessEmbedder) -> None:
    expected = embedder.embed(TEXTS[:1])
    first = _child_pid(embedder)

    os.kill(first, signal.SIGKILL)
    assert _gone(first)
    again = embedder.embed(TEXTS[:1])

    np.testing.assert_allclose(np.array(again), np.array(expected), atol=1e-6)
    assert _child_pid(embedder) != first


def test_a_failing_call_is_an_error_and_the_child_keeps_serving(embedder: ModelProcessEmbedder) -> None:
    pid = _child_pid(embedder) if embedder._process else None
    with pytest.raises(OrchestrionError, match="embedding failed"):
        embedder.embed([None])  # type: ignore[list-item]  # what a bug upstream could send

    assert len(embedder.embed(TEXTS[:1])[0]) == 384
    if pid is not None:
        assert _child_pid(embedder) == pid


def test_a_child_that_dies_while_starting_is_a_clear_error_and_is_reaped() -> None:
    broken = ModelProcessEmbedder(8, threads=1, runtime="bogus")  # type: ignore[arg-type]  # the child refuses it
    with pytest.raises(OrchestrionError, match="exited while starting"):
        broken.embed(["anything"])
    assert broken._process is None and broken._conn is None  # nothing left behind


def test_the_child_exits_when_its_parent_dies_without_closing_it() -> None:
    script = (
        "import os, sys\n"
        "from rag.model_process import ModelProcessEmbedder\n"
        "m = ModelProcessEmbedder(32, 1)\n"
        "m.embed(['x'])\n"
        "print(m._process.pid, flush=True)\n"
        "os._exit(0)\n"  # no close, no atexit: as if killed
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=True)
    child = int(out.stdout.split()[-1])

    assert _gone(child), f"embedding process {child} outlived its parent"


def test_servers_embed_in_a_model_process_in_small_batches_and_workers_in_process() -> None:
    settings = RagSettings()

    cached = build_embedder(settings, None, "p", serving=True)
    batch = build_embedder(settings, None, "p")

    assert isinstance(cached, MemoryCachedEmbedder)  # servers cache queries in memory, not in Redis
    serving = cached.inner
    assert isinstance(serving, BatchingEmbedder) and isinstance(serving._inner, ModelProcessEmbedder)
    assert serving._max_batch == settings.query_batch_size < settings.embed_batch_size
    assert isinstance(batch, BatchingEmbedder) and isinstance(batch._inner, LocalEmbedder)
    assert batch._max_batch == settings.embed_batch_size
    in_process = build_embedder(
        settings.model_copy(update={"query_model_process": False, "query_cache_entries": 0}), None, "p", serving=True
    )
    assert isinstance(in_process, BatchingEmbedder) and isinstance(in_process._inner, LocalEmbedder)
    assert batch._inner.runtime == "onnx"  # the default: no PyTorch in the default install
    on_torch = build_embedder(settings.model_copy(update={"embedding_runtime": "torch"}), None, "p")
    assert isinstance(on_torch, BatchingEmbedder) and isinstance(on_torch._inner, LocalEmbedder)
    assert on_torch._inner.runtime == "torch"  # chosen by settings; loaded on first use, so nothing imports here


def test_closing_a_servers_embedder_ends_its_model_process_and_a_later_call_starts_one() -> None:
    cached = build_embedder(RagSettings(), None, "p", serving=True)  # what RagServices.close() closes
    assert isinstance(cached, MemoryCachedEmbedder) and isinstance(cached.inner, BatchingEmbedder)
    child = cached.inner._inner
    assert isinstance(child, ModelProcessEmbedder)
    cached.embed(TEXTS[:1])
    first = _child_pid(child)

    cached.close()

    assert _gone(first)
    assert len(cached.embed(TEXTS[1:])[0]) == 384
    assert _child_pid(child) != first
    cached.close()
