"""The local embedding model in a child process, so that it never waits for the server's GIL.

PyTorch releases the GIL inside each operator but takes it back between operators, and a
MiniLM forward pass is a few hundred operators; ONNX Runtime releases it for a whole run,
but tokenizing, padding and taking the result back each need it. In a server whose event
loop and request threads keep the GIL busy, the model thread queues for it: six short
queries took 34 ms alone and 138 ms next to one busy Python thread with PyTorch, 23 and
74 ms with ONNX Runtime (2-core machine, bench/results/embedder.md). In its own process the
model has a GIL to itself; the server's side only sends texts down a pipe and waits, which
holds no GIL.

One child per server process, started on first use (so no process exists at import time
or before a fork), fed by the one dispatcher thread of rag/batching.py. If the child dies,
the call is retried once on a new child: embedding is a pure function of the texts.
"""

from __future__ import annotations

import gc
import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import OrchestrionError

if TYPE_CHECKING:  # rag.embedding builds this class: a runtime import would be circular
    from rag.embedding import EmbeddingSpec
    from rag.local_model import Runtime

log = logging.getLogger(__name__)
START_TIMEOUT_S = 120.0  # the torch runtime's import and load on a busy 2-core machine (ONNX: ~1 s)


class ModelProcessEmbedder:
    def __init__(self, batch_size: int, threads: int, runtime: Runtime = "onnx") -> None:
        self._batch_size = batch_size
        self._threads = threads
        self._runtime: Runtime = runtime
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None

    @property
    def spec(self) -> EmbeddingSpec:
        from rag.embedding import LOCAL_SPEC

        return LOCAL_SPEC

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    conn.send(list(texts))
                    reply = conn.recv()
                except (EOFError, OSError) as exc:
                    self._discard()
                    if attempt == 2:
                        raise OrchestrionError("the embedding model process died twice in a row") from exc
                    log.warning("embedding model process died (%s); starting a new one", type(exc).__name__)
                    continue
                if isinstance(reply, str):
                    raise OrchestrionError(f"embedding failed: {reply}")
                return reply.astype(float).tolist()  # type: ignore[no-any-return]
        raise AssertionError("unreachable")

    def close(self) -> None:
        with self._lock:
            self._discard()

    def _connection(self) -> Connection:
        if self._conn is None:
            # A fresh interpreter (not fork: this process has threads, maybe torch; not multiprocessing's
            # spawn: it re-runs the parent's __main__, here the CLI), talking over a socket pair.
            ours, theirs = socket.socketpair()
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rag.model_process",
                    str(theirs.fileno()),
                    str(self._batch_size),
                    str(self._threads),
                    self._runtime,
                ],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
            )
            theirs.close()  # the child holds its end: with ours gone too, its death reads as end of file here
            conn = Connection(ours.detach())
            self._process, self._conn = process, conn
            try:
                started, died = conn.poll(START_TIMEOUT_S) and conn.recv() == "ready", False
            except (EOFError, OSError):
                started, died = False, True
            if not started:
                self._discard()  # reaped, not left a zombie
                raise OrchestrionError(
                    "the embedding model process exited while starting (its error is in this process's log)"
                    if died
                    else f"the embedding model process did not start within {START_TIMEOUT_S:.0f}s"
                )
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
        self._process, self._conn = None, None


def serve_model(conn: Connection, batch_size: int, threads: int, runtime: Runtime) -> None:
    """The child: load the model, then embed whatever arrives until the parent goes away. Only the model's
    own modules are imported (not rag.embedding's HTTP and Redis clients): they would add ~1 s to its start."""
    from rag.local_model import load_model

    model = load_model(runtime, batch_size, threads)
    model.vectors(["warm-up"])
    gc.freeze()  # see core/heap.py
    conn.send("ready")
    while True:
        try:
            texts: Any = conn.recv()
        except (EOFError, OSError):  # the parent closed the pipe or died: nothing left to serve
            return
        try:
            vectors = np.asarray(model.vectors(texts), dtype=np.float32)
        except Exception as exc:  # noqa: BLE001 - sent to the caller, which raises it
            conn.send(f"{type(exc).__name__}: {exc}")
            continue
        conn.send(vectors)


if __name__ == "__main__":
    runtime: Any = sys.argv[4]
    serve_model(Connection(int(sys.argv[1])), int(sys.argv[2]), int(sys.argv[3]), runtime)
