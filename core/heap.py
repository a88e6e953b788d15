"""Keep the garbage collector's full passes away from request latency.

A server process holds ~720,000 GC-tracked objects once torch, transformers, LangChain,
the MCP SDK and the Weaviate client are loaded, nearly all of them alive for the whole
process. Python's full collection walks every one of them: 430-460 ms measured here,
during which no thread runs Python. Under load that pause lands inside requests (it was
bench/retrieval's p99 outlier). Freezing moves what exists after start-up into a
permanent generation the collector skips, so later full passes only walk what requests
allocated.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Call once, when start-up (imports, model load, connections) is done."""
    gc.collect()
    gc.freeze()
