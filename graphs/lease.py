"""One execution of a run: its lease, renewed every third of its life from the moment it is taken, and the two
things that stop the execution from outside: the lease lost (another process resumes the run) or a cancellation
asked for by a client (the run ends as the client asked: interrupted, or rolled back)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

from core.errors import OrchestrionError
from graphs.runs import RunStore

T = TypeVar("T")


class RunLostError(OrchestrionError):
    """This process lost the run's lease (it stalled past the lease); another process resumes the run."""


class RunCancelledError(OrchestrionError):
    """A client cancelled the run; `action` says how it ends (interrupt: keep its state; rollback: undo it)."""

    def __init__(self, run_id: str, action: str) -> None:
        super().__init__(f"run {run_id} was cancelled ({action})")
        self.action = action


class Execution:
    def __init__(self, store: RunStore, run_id: str, owner: str, ttl_s: float) -> None:
        self.store, self.run_id, self.owner, self.ttl_s = store, run_id, owner, ttl_s
        self.lost = False
        self.cancel_action: str | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._guarded: asyncio.Future[Any] | None = None

    def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep())

    async def _keep(self) -> None:
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                if await self.store.renew_lease(self.run_id, self.owner, self.ttl_s):
                    renewed = time.monotonic()
                    # The flag too: a cancellation published while this process's listener reconnected.
                    action = await self.store.cancel_requested(self.run_id)
                    if action:
                        self.cancel(action)
                    continue
            except Exception:  # noqa: BLE001 - a Redis blip: try again while the lease may still be ours
                if time.monotonic() - renewed < self.ttl_s:
                    continue
            self.lost = True
            self._stop_guarded()
            return

    def cancel(self, action: str) -> None:
        """A client's cancellation reached this process: stop the execution, which then settles the run so."""
        self.cancel_action = self.cancel_action or action
        self._stop_guarded()

    def _stop_guarded(self) -> None:
        if self._guarded is not None:
            self._guarded.cancel()

    async def guard(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work`; stopped by a lost lease (RunLostError) or a cancellation (RunCancelledError)."""
        guarded: asyncio.Future[T] = asyncio.ensure_future(work)
        self._guarded = guarded
        if self.cancel_action:  # cancelled before the work began
            guarded.cancel()
        try:
            return await guarded
        except asyncio.CancelledError:
            self.check()
            raise
        finally:
            self._guarded = None

    def check(self) -> None:
        if self.lost:
            raise RunLostError(f"run {self.run_id}: lease lost; another process resumes it")
        if self.cancel_action:
            raise RunCancelledError(self.run_id, self.cancel_action)

    async def stop(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
