"""The ingest queue limit is exact: jobs accepted and not yet started never exceed it, across submitters,
and no accepted job is lost, also when a producer dies between admitting and queueing its jobs. A refused
submission waits in a line and is told to come back about when its turn comes.

Each test has a key prefix of its own: its queue is consumed by no worker, or by the one it starts.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from core.errors import BusyError, IdempotencyKeyReusedError, InvalidInputError, OrchestrionError
from rag.ingest import IngestService, Submission
from rag.jobs import HORIZON_MIN_S, JobState, JobStatus
from tests.conftest import free_port, start_worker
from tests.rag.conftest import Private, note, text_of
from tests.rag.helpers import wait_jobs
from workers.client import QueueClient


def test_concurrent_submitters_never_exceed_the_limit(private: Callable[..., Private], tenant: str) -> None:
    p = private(10)
    service = p.service()
    start = threading.Barrier(50)

    def submit(i: int) -> JobStatus | BusyError:
        start.wait()
        try:
            [job] = service.submit(tenant, [note(f"burst-{i}")])
            return job
        except BusyError as busy:
            return busy

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(submit, range(50)))

    accepted = [a.job_id for a in answers if isinstance(a, JobStatus)]
    refused = [a for a in answers if isinstance(a, BusyError)]
    assert len(accepted) == 10 and len(refused) == 40
    assert all(b.retry_after_s >= 1 and "retry after" in str(b) for b in refused)
    # Nothing lost: each accepted job is on the queue exactly once, and the refused left nothing behind.
    assert sorted(p.queued_job_ids()) == sorted(accepted) == sorted(p.admitted())
    assert p.unconfirmed() == set()
    assert p.keys("job") == p.keys("jobdata") == p.keys(f"idem:{tenant}") == 10
    assert p.keys("jobstaged") == 0  # the refused submissions' bytes, written before admission, are gone
    assert all(service.status(tenant, job_id).state == JobState.QUEUED for job_id in accepted)


def test_a_submission_is_admitted_all_or_none(private: Callable[..., Private], tenant: str) -> None:
    p = private(5)
    service = p.service()
    first = service.submit(tenant, [note("a"), note("b"), note("c")])

    with pytest.raises(BusyError) as busy:
        service.submit(tenant, [note("d"), note("e"), note("f")])
    assert "3 ingest jobs wait to start (limit 5)" in str(busy.value) and busy.value.retry_after_s >= 1
    assert p.jobs.waiting() == 3 and p.keys(f"idem:{tenant}") == 3 and p.keys("jobdata") == 3

    second = service.submit(tenant, [note("d"), note("e")])
    with pytest.raises(BusyError):
        service.submit(tenant, [note("f")])
    with pytest.raises(InvalidInputError, match="6 new documents in one submission, over the ingest queue limit of 5"):
        service.submit(tenant, [note(f"part-{i}") for i in range(6)])

    kept = [j.job_id for j in first + second]
    assert sorted(p.queued_job_ids()) == sorted(kept) == sorted(p.admitted())
    assert all(service.status(tenant, job_id).state == JobState.QUEUED for job_id in kept)


def test_resubmission_while_full_is_answered_with_the_same_job(private: Callable[..., Private], tenant: str) -> None:
    p = private(3)
    service = p.service()
    [by_content] = service.submit(tenant, [note("a")])
    [by_key] = service.submit(tenant, [note("b")], idempotency_key="upload-7")
    twice = service.submit(tenant, [note("c"), note("c")])  # the same document twice: one job, one slot
    assert twice[0].job_id == twice[1].job_id and p.jobs.waiting() == 3

    [again] = service.submit(tenant, [note("a")])
    [again_by_key] = service.submit(tenant, [note("b")], idempotency_key="upload-7")
    with pytest.raises(BusyError):
        service.submit(tenant, [note("a"), note("new")])  # one new document is one too many

    assert again.job_id == by_content.job_id and again_by_key.job_id == by_key.job_id
    assert sorted(p.queued_job_ids()) == sorted({by_content.job_id, by_key.job_id, twice[0].job_id})
    assert p.keys(f"idem:{tenant}") == 3


def test_one_idempotency_key_raced_with_other_content_admits_only_the_first(
    private: Callable[..., Private], tenant: str
) -> None:
    """Two submissions at once under one key with different content: one job, the other told the key is taken
    (the check is inside the admission script, so neither passes it before the other writes)."""
    p = private(100)
    service = p.service()

    def race(round_: int) -> list[JobStatus | IdempotencyKeyReusedError]:
        start = threading.Barrier(2)

        def submit(i: int) -> JobStatus | IdempotencyKeyReusedError:
            start.wait()
            try:
                [job] = service.submit(tenant, [note(f"race-{round_}-{i}")], idempotency_key=f"race-{round_}")
                return job
            except IdempotencyKeyReusedError as reused:
                return reused

        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(submit, range(2)))

    for round_ in range(10):
        answers = race(round_)
        accepted = [a for a in answers if isinstance(a, JobStatus)]
        refused = [a for a in answers if isinstance(a, IdempotencyKeyReusedError)]
        assert len(accepted) == 1 and len(refused) == 1, (round_, answers)
        assert f"'race-{round_}' was used for other content (document 0" in str(refused[0])
    assert p.keys("job") == p.keys("jobdata") == p.keys(f"idem:{tenant}") == 10 == len(p.queued_job_ids())


def _refused(service: IngestService, tenant: str, name: str) -> BusyError:
    with pytest.raises(BusyError) as busy:
        service.submit(tenant, [note(name)])
    return busy.value


def _told(busy: BusyError) -> tuple[int, int]:
    """(refused documents ahead in the line, Retry-After), as the refusal tells them."""
    ahead = re.search(r"and (\d+) refused documents are ahead of yours", str(busy))
    assert ahead, str(busy)
    return int(ahead.group(1)), busy.retry_after_s


def _expected_wait(slots: int, interval: float, horizon: float) -> float:
    """The wait for `slots` more job starts at `interval` s each, told shorter beyond `horizon`."""
    wait = slots * interval
    return wait if wait <= horizon else horizon * (1 + math.log(wait / horizon))


def test_retry_after_grows_with_the_clients_waiting_ahead(private: Callable[..., Private], tenant: str) -> None:
    p = private(40)
    service = p.service()
    service.submit(tenant, [note(f"full-{i}") for i in range(40)])
    assert p.jobs.drain_interval() is None  # no job started yet: one start a second is assumed
    start = threading.Barrier(30)

    def refuse(i: int) -> BusyError:
        start.wait()
        return _refused(service, tenant, f"late-{i}")

    with ThreadPoolExecutor(30) as pool:
        told = sorted(_told(busy) for busy in pool.map(refuse, range(30)))

    # 30 at once, each with a place of its own, told to come back when the slots of those ahead and its own
    # have freed (a second each), plus under a slot of jitter: spread out, in the order of the line.
    assert [ahead for ahead, _ in told] == list(range(30))
    assert [retry for _, retry in told[:5]] == [2, 3, 4, 5, 6]
    # The pace is unchecked (no job has started while jobs waited), so a wait is told as it is only up to
    # HORIZON_MIN_S and shorter beyond, growing with its log: the far end comes back after 14-15 s, not 30,
    # to be told again at the pace measured by then.
    for ahead, retry in told:
        wait = _expected_wait(ahead + 1, 1.0, HORIZON_MIN_S)
        assert math.ceil(wait) <= retry <= math.ceil(wait + 1.0), (ahead, retry)
    assert told[-1][1] in {14, 15}  # 5 * (1 + ln 6) = 13.96
    assert p.jobs.waiting() == 40 and p.keys("jobdata") == 40


def test_retry_after_follows_the_pace_jobs_start_at(private: Callable[..., Private], tenant: str) -> None:
    p = private(40)
    service = p.service()
    waiting = service.submit(tenant, [note(f"full-{i}") for i in range(40)])
    for job in waiting[:11]:
        p.jobs.started(tenant, job.job_id)
        time.sleep(0.5)
    p.jobs.started(tenant, waiting[11].job_id)
    interval = p.jobs.drain_interval()
    assert interval is not None and 0.5 <= interval < 0.75  # the gaps between starts while jobs waited

    service.submit(tenant, [note(f"refill-{i}") for i in range(12)])
    told = [_told(_refused(service, tenant, f"late-{i}")) for i in range(20)]
    # Jobs have waited for 5.5 s without a break, with a start every 0.5 s: waits up to twice that are told
    # as they are (the last, 20 starts away: 10 s, where an unchecked pace would tell 5 * (1 + ln 2) = 8.5 s).
    assert [ahead for ahead, _ in told] == list(range(20))
    for ahead, retry in told:
        wait = (ahead + 1) * interval
        assert math.ceil(wait) <= retry <= math.ceil(wait + interval), (ahead, retry, interval)
    assert told[-1][1] >= 10


def test_a_refused_client_that_comes_back_keeps_its_place(private: Callable[..., Private], tenant: str) -> None:
    p = private(3)
    service = p.service()
    waiting = service.submit(tenant, [note(f"full-{i}") for i in range(3)])
    for i in range(5):
        assert _told(_refused(service, tenant, f"late-{i}"))[0] == i

    assert _told(_refused(service, tenant, "late-3"))[0] == 3  # back too early: still 3 ahead, not sent to the back
    assert _told(_refused(service, tenant, "newcomer"))[0] == 5

    p.jobs.started(tenant, waiting[0].job_id)
    p.jobs.started(tenant, waiting[1].job_id)
    admitted = service.submit(tenant, [note("late-0")]) + service.submit(tenant, [note("late-1")])
    # The admitted left the line: those behind them moved up.
    assert _told(_refused(service, tenant, "late-3"))[0] == 1
    assert _told(_refused(service, tenant, "newcomer"))[0] == 3
    assert p.admitted() == {waiting[2].job_id} | {j.job_id for j in admitted}


def test_a_newcomer_does_not_take_the_slot_of_a_client_in_line(private: Callable[..., Private], tenant: str) -> None:
    p = private(2)
    service = p.service()
    waiting = service.submit(tenant, [note("one"), note("two")])
    _refused(service, tenant, "first")

    p.jobs.started(tenant, waiting[0].job_id)  # a slot frees: the one "first" was told to come back for
    assert _told(_refused(service, tenant, "second"))[0] == 1
    [first] = service.submit(tenant, [note("first")])
    assert _told(_refused(service, tenant, "second"))[0] == 0

    p.jobs.started(tenant, waiting[1].job_id)
    [second] = service.submit(tenant, [note("second")])
    assert p.admitted() == {first.job_id, second.job_id}
    assert sorted(p.queued_job_ids()) == sorted(j.job_id for j in [*waiting, first, second])


def test_a_client_that_gave_up_stops_holding_its_place(private: Callable[..., Private], tenant: str) -> None:
    p = private(1, line_grace_s=1.0)
    service = p.service()
    service.submit(tenant, [note("one")])
    gone = _refused(service, tenant, "gives-up")
    refused_at = time.monotonic()
    # Retry-After is whole seconds with jitter, so two refusals in the same instant can be told the same
    # time; "stays" comes later, so its time (and grace) surely ends after that of "gives-up".
    time.sleep(1.5)
    assert _told(_refused(service, tenant, "stays"))[0] == 1

    # Past the retry time and grace of "gives-up"; "stays" is still within its own.
    time.sleep(max(0.0, refused_at + gone.retry_after_s + 1.0 + 0.3 - time.monotonic()))
    assert _told(_refused(service, tenant, "newcomer"))[0] == 1
    assert _told(_refused(service, tenant, "stays"))[0] == 0


def test_the_wait_told_grows_while_no_job_starts(private: Callable[..., Private], tenant: str) -> None:
    p = private(1)
    service = p.service()
    service.submit(tenant, [note("stuck")])  # no worker: it never starts
    assert _told(_refused(service, tenant, "waits")) in {(0, 1), (0, 2)}

    time.sleep(3.0)
    ahead, retry = _told(_refused(service, tenant, "waits"))
    # Nothing started for 3 s, longer than the pace allows: the workers are stalled, and the wait told
    # grows with the stall rather than have the line poll a queue that does not move.
    assert ahead == 0 and retry >= 4


def test_jobs_that_cannot_be_queued_are_withdrawn_and_free_their_slots(
    private: Callable[..., Private], tenant: str
) -> None:
    p = private(3)
    # A Redis nobody listens on: queueing fails for real (connection refused), without the usual retries.
    dead = QueueClient(p.settings, f"redis://127.0.0.1:{free_port()}/0")
    dead.app.conf.task_publish_retry = False
    [kept] = p.service().submit(tenant, [note("kept")], idempotency_key="batch-0")
    docs = [note("lost-1"), note("lost-2")]

    try:
        with pytest.raises(OrchestrionError, match=r"could not queue document\(s\) 0, 1 \(.*\): not accepted"):
            p.service(dead.enqueue_ingest).submit(tenant, docs, idempotency_key="batch-1")
    finally:
        dead.app.close()

    assert p.queued_job_ids() == [kept.job_id]
    assert p.admitted() == {kept.job_id} and p.unconfirmed() == set() and p.jobs.waiting(tenant) == 1
    assert p.keys(f"idem:{tenant}") == 1
    jobs = [p.jobs.load(text_of(key).rsplit(":", 1)[1]) for key in p.redis.keys(f"{p.prefix}:job:*")]
    failed = [j for j in jobs if j.job_id != kept.job_id]
    assert [(j.state, j.error) for j in failed] == [(JobState.FAILED, "could not be queued")] * 2
    assert p.redis.exists(f"{p.prefix}:jobdata:{kept.job_id}") and p.keys("jobdata") == 1  # theirs dropped

    retried = p.service().submit(tenant, docs, idempotency_key="batch-1")
    assert {j.job_id for j in retried}.isdisjoint(j.job_id for j in failed)
    assert sorted(p.queued_job_ids()) == sorted(j.job_id for j in [kept, *retried]) == sorted(p.admitted())


def test_a_worker_starting_a_job_frees_its_slot(
    private: Callable[..., Private], tenant: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    p = private(2)
    service = p.service()
    waiting = service.submit(tenant, [note("one"), note("two")])
    with pytest.raises(BusyError):
        service.submit(tenant, [note("three")])

    worker, _ = start_worker(p.env(stack_env), tmp_path, concurrency=1)
    try:
        done = wait_jobs(p.services(), tenant, waiting)
        assert [j.state for j in done] == [JobState.DONE] * 2
        assert p.jobs.waiting() == 0
        # The second job waited while the first ran: the gap between their starts is the workers' pace.
        interval = p.jobs.drain_interval()
        assert interval is not None and 0 < interval < max(j.updated_at for j in done) - waiting[0].created_at
        [third] = service.submit(tenant, [note("three")])
        [third] = wait_jobs(p.services(), tenant, [third])
        assert third.state == JobState.DONE and p.admitted() == p.unconfirmed() == set()
    finally:
        worker.stop()


def test_job_run_times_recorded_together_all_count(private: Callable[..., Private]) -> None:
    """Workers finishing at once each add their run time to the estimate refused clients are told from."""
    p = private(1)
    assert p.jobs.mean_job_seconds() is None
    assert [p.jobs.record_duration(s) for s in (1.0, 3.0, 5.0)] == [1, 2, 3]
    assert p.jobs.mean_job_seconds() == pytest.approx(3.0)  # the first few: a plain mean
    with ThreadPoolExecutor(16) as pool:
        counts = list(pool.map(p.jobs.record_duration, [3.0] * 200))
    assert sorted(counts) == list(range(4, 204))  # none lost to another's update
    assert p.jobs.mean_job_seconds() == pytest.approx(3.0)


def test_an_older_version_run_last_does_not_replace_a_newer_one(private: Callable[..., Private], tenant: str) -> None:
    """Two workers, a long v1 and a short v2: v2 is written first, and v1 must not overwrite it after."""
    p = private(10)  # no worker consumes this prefix's queue: the jobs are run here, in the order chosen
    service = p.service()
    [v1] = service.submit(tenant, [Submission(b"# Plan\n\nVersion one of the plan.", "plan.md")])
    [v2] = service.submit(tenant, [Submission(b"# Plan\n\nVersion two of the plan.", "plan.md")])
    assert service.run(v2.job_id).state == JobState.DONE
    late = service.run(v1.job_id)
    assert late.state == JobState.DONE and late.result["superseded"] == 1
    [chunk] = p.rag.store.document_chunks(tenant, "plan.md")
    assert "Version two" in chunk.text
    assert p.rag.store.document(tenant, "plan.md").submitted_at == v2.created_at


_DIE_AFTER_ADMITTING = """
import os, sys
from core.settings import get_settings
from rag.ingest import Submission
from rag.services import open_rag

def die(tenant: str, job_ids: list[str]) -> None:
    os._exit(3)

rag = open_rag(get_settings(), enqueue=die)
rag.ingest.submit(sys.argv[1], [Submission(b"# Orphan\\n\\nAdmitted by a process that died before queueing it.",
                                           "orphan.md")])
"""


def test_producer_dying_between_admitting_and_queueing_leaks_no_slot(
    private: Callable[..., Private], tenant: str, stack_env: dict[str, str], tmp_path: Path
) -> None:
    p = private(1)
    died = subprocess.run([sys.executable, "-c", _DIE_AFTER_ADMITTING, tenant], env=p.env(stack_env), timeout=120)
    assert died.returncode == 3
    [orphan] = p.admitted()
    assert p.unconfirmed() == {orphan} and p.queued_job_ids() == []
    assert p.jobs.load(orphan).state == JobState.QUEUED

    # Within the grace the orphan is left alone: its producer may only be slow.
    with pytest.raises(BusyError):
        p.service().submit(tenant, [note("next")])
    assert p.queued_job_ids() == []

    impatient = private(1, enqueue_grace_s=1.0)
    time.sleep(1.1)
    with pytest.raises(BusyError):  # the slot is still the orphan's, but this submission queues the orphan
        impatient.service().submit(tenant, [note("next")])
    assert p.queued_job_ids() == [orphan] and p.unconfirmed() == set()

    worker, _ = start_worker(p.env(stack_env), tmp_path, concurrency=1)
    try:
        [done] = wait_jobs(p.services(), tenant, [p.jobs.load(orphan)])
        assert done.state == JobState.DONE and done.doc_id == "orphan.md"
        [after] = impatient.service().submit(tenant, [note("next")])
        assert wait_jobs(p.services(), tenant, [after])[0].state == JobState.DONE
    finally:
        worker.stop()


def test_slot_of_a_job_lost_from_the_queue_frees_when_the_job_expires(
    private: Callable[..., Private], tenant: str
) -> None:
    p = private(1, ttl_s=2)
    service = p.service()
    service.submit(tenant, [note("purged")])
    assert p.queue.app.control.purge() == 1  # an operator empties the queue: the task is gone, its job waits
    with pytest.raises(BusyError):
        service.submit(tenant, [note("next")])

    time.sleep(2.1)
    [job] = service.submit(tenant, [note("next")])
    assert p.admitted() == {job.job_id}
