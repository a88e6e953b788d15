"""Per worker process resources, made on first use (after the pool forks, never at import).

Each pool process opens one Host (services, queue producer, runner, toolbox) on an event loop of its
own that runs in a background thread for the process's life: tasks are synchronous, but what they
drive is asynchronous and long-lived (MCP connections to stdio servers, Redis pools, the
checkpointer), so every task submits its coroutine to that one loop instead of making a loop per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from core.heap import freeze_startup_heap
from core.settings import get_settings
from rag.services import RagServices
from workers.host import Host, HostOpener

log = logging.getLogger(__name__)
T = TypeVar("T")
_lock = threading.Lock()
_opener: HostOpener | None = None
_loop: asyncio.AbstractEventLoop | None = None
_host: Host | None = None
_closing: asyncio.Event | None = None
_holder: Future[None] | None = None


def use_opener(opener: HostOpener) -> None:
    """Called by the worker's entry point (before the pool forks): how pool processes open their Host."""
    global _opener
    _opener = opener


def _start_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="worker-loop", daemon=True).start()
    return loop


def run_async(coroutine: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run `coroutine` on this process's loop and wait for it (from a task's thread)."""
    host()  # the loop exists once the host is open
    assert _loop is not None
    return asyncio.run_coroutine_threadsafe(coroutine, _loop).result(timeout)


def host() -> Host:
    global _loop, _host, _holder
    with _lock:
        if _host is not None:
            return _host
        if _opener is None:
            raise RuntimeError("worker process has no composition root: start it with `orchestrion worker`")
        _loop = _loop or _start_loop()
        opened: Future[Host] = Future()
        _holder = asyncio.run_coroutine_threadsafe(_hold(_opener, opened), _loop)
        try:
            _host = opened.result(timeout=300)
        except BaseException:
            _holder.cancel()  # a Host still opening must not stay open beside the next attempt's
            raise
        return _host


async def _hold(opener: HostOpener, opened: Future[Host]) -> None:
    """Enter the Host and keep it open in one task (its task groups must be left in the task that entered them)."""
    global _closing
    _closing = asyncio.Event()
    try:
        async with opener(get_settings(), "worker") as opened_host:
            opened.set_result(opened_host)
            await _closing.wait()
    except BaseException as exc:
        if not opened.done():
            opened.set_exception(exc)
        raise


def close_host(**_: object) -> None:
    """At pool-process shutdown: close the Host (MCP servers' subprocesses, pools) before the process exits."""
    if _loop is not None and _closing is not None:
        _loop.call_soon_threadsafe(_closing.set)
        if _holder is not None:
            with contextlib.suppress(Exception):
                _holder.result(timeout=15)


def rag_services() -> RagServices:
    return host().services.rag


def warm_up(**_: object) -> None:
    """Connect and load the embedding model when a pool process starts, so the first task's
    time limit measures the task, not torch's import. Failure here is not fatal: the first
    task tries again and reports its own error."""
    try:
        rag_services().embedder.embed(["warm-up"])
        freeze_startup_heap()
    except Exception:
        log.warning("worker warm-up failed; the first task will retry", exc_info=True)
