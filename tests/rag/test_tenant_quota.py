"""Each tenant has a limit of its own on its jobs accepted and not yet started: a tenant at it is refused
(429, in a line of its own) while other tenants still get in, and nothing of the global limit's exactness
or line changes. No worker consumes these queues: starts are marked by hand."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from core.errors import BusyError, InvalidInputError
from tests.rag.conftest import Private, note


def _refused(p: Private, tenant: str, name: str) -> BusyError:
    with pytest.raises(BusyError) as busy:
        p.service().submit(tenant, [note(name)])
    return busy.value


def _ahead(busy: BusyError) -> int:
    found = re.search(r"and (\d+) refused documents are ahead of yours", str(busy))
    assert found, str(busy)
    return int(found.group(1))


def test_a_tenant_at_its_limit_is_refused_and_others_still_get_in(
    private: Callable[..., Private], tenant: str, other_tenant: str
) -> None:
    p = private(7, tenant_limit=4)
    service = p.service()
    bulk = service.submit(tenant, [note(f"bulk-{i}") for i in range(4)])

    busy = _refused(p, tenant, "one-more")
    assert "4 of this tenant's ingest jobs wait to start (tenant's limit 4)" in str(busy), str(busy)
    assert busy.retry_after_s >= 1
    assert _ahead(_refused(p, tenant, "and-another")) == 1  # the tenant's own refused line up among themselves

    # The other tenant is not held back by the first one's refused submissions: in the global line they would
    # count against its room (4 waiting + 2 in line + 3 new > 7).
    others = service.submit(other_tenant, [note(f"other-{i}") for i in range(3)])
    assert p.jobs.waiting() == 7 and p.jobs.waiting(tenant) == 4 and p.jobs.waiting(other_tenant) == 3
    assert sorted(p.queued_job_ids()) == sorted(j.job_id for j in bulk + others) == sorted(p.admitted())

    # As the tenant's jobs start, its own line is admitted in order, within the global limit as ever.
    assert p.jobs.started(tenant, bulk[0].job_id)
    [admitted] = service.submit(tenant, [note("one-more")])
    assert p.jobs.waiting(tenant) == 4 and p.jobs.waiting() == 7 and admitted.job_id in p.admitted()
    p.jobs.started(tenant, bulk[1].job_id)
    service.submit(other_tenant, [note("fills-the-global-limit")])
    busy = _refused(p, tenant, "and-another")  # room of its own now, none globally
    assert "7 ingest jobs wait to start (limit 7)" in str(busy) and "tenant" not in str(busy), str(busy)


def test_a_submission_over_the_tenant_limit_can_never_fit(private: Callable[..., Private], tenant: str) -> None:
    p = private(10, tenant_limit=4)
    with pytest.raises(InvalidInputError, match=r"5 new documents .* tenant's ingest queue limit of 4 .*INGEST_TENANT"):
        p.service().submit(tenant, [note(f"part-{i}") for i in range(5)])
    assert p.jobs.waiting() == 0 and p.keys(f"idem:{tenant}") == 0


def test_a_tenant_limit_at_the_global_limit_is_no_limit_of_its_own(
    private: Callable[..., Private], tenant: str
) -> None:
    p = private(3, tenant_limit=3)
    p.service().submit(tenant, [note(f"full-{i}") for i in range(3)])
    busy = _refused(p, tenant, "late")
    assert "3 ingest jobs wait to start (limit 3)" in str(busy) and "tenant" not in str(busy), str(busy)


def test_a_removed_tenant_leaves_no_admission_state(private: Callable[..., Private], tenant: str) -> None:
    p = private(10, tenant_limit=1)
    [job] = p.service().submit(tenant, [note("one")])
    _refused(p, tenant, "two")
    assert p.redis.exists(f"{p.prefix}:ingest:tenant:{tenant}:line")
    p.jobs.forget_tenant(tenant)
    assert not p.redis.keys(f"{p.prefix}:ingest:tenant:{tenant}:*") and p.keys(f"idem:{tenant}") == 0
    assert job.job_id in p.admitted()  # the global count keeps the job until it starts or expires
