"""The agent run task: a run id in (the Celery task id too), the run executed by this process's runner.

Delivered at least once. Executing takes the run's lease, so a second delivery while the first still runs
is refused, and one after the run settled returns at once; a run whose worker died is resumed from its
last checkpoint (by lease recovery, which sends it here again, or by this redelivery).
"""

from __future__ import annotations

import logging

from celery import shared_task

from core.errors import NotFoundError, OrchestrionError
from workers.app import RUN_TASK

log = logging.getLogger(__name__)


@shared_task(name=RUN_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)  # type: ignore[untyped-decorator]
def execute_run(run_id: str) -> str:
    from workers.process import host, run_async

    runner = host().require_runner()
    try:
        run = run_async(runner.execute(run_id))
    except NotFoundError:
        log.info("run %s is gone (deleted or expired): nothing to execute", run_id)
        return "gone"
    except OrchestrionError as exc:  # executed by another process right now: that one settles it
        log.info("run %s not executed here: %s", run_id, exc)
        return "elsewhere"
    log.info("run %s: %s", run_id, run.status)
    return run.status
