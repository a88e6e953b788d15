"""Idle tenants are offloaded (Weaviate INACTIVE, files closed) and wake up on their next use."""

from __future__ import annotations

import time
import uuid

from weaviate.classes.tenants import TenantActivityStatus

from orchestrion.knowledge import provision
from rag.activity import TenantActivity, offload_idle
from rag.search import SearchRequest, search
from rag.services import RagServices
from tests.rag.helpers import GUIDE, ingest_text


def _status(rag: RagServices, tenant: str) -> set[TenantActivityStatus]:
    found = set()
    for name in (rag.store.chunks_name, rag.store.docs_name):
        info = rag.weaviate.collections.use(name).tenants.get_by_name(tenant)
        assert info is not None
        found.add(info.activity_status)
    return found


def _new_tenant(rag: RagServices) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    provision(rag, name)
    ingest_text(rag, name, GUIDE, doc_id="payments")
    return name


def test_a_tenant_unused_for_longer_than_the_limit_is_offloaded_and_wakes_on_search(rag: RagServices) -> None:
    idle, busy = _new_tenant(rag), _new_tenant(rag)
    two_hours_ago = TenantActivity(rag.redis, rag.settings.redis.key_prefix, clock=lambda: time.time() - 7200)
    two_hours_ago.touch(idle)
    assert _status(rag, idle) == _status(rag, busy) == {TenantActivityStatus.ACTIVE}

    offloaded = offload_idle(rag.store, rag.activity, idle_s=1800)

    assert idle in offloaded
    assert busy not in offloaded
    assert _status(rag, idle) == {TenantActivityStatus.INACTIVE}
    assert _status(rag, busy) == {TenantActivityStatus.ACTIVE}
    # Nobody needs to know: the next query wakes it and answers as before.
    hits = search(rag.store, rag.embedder, idle, SearchRequest(query="how are refunds handled?", k=3))
    assert hits and hits[0].doc_id == "payments"
    assert TenantActivityStatus.ACTIVE in _status(rag, idle)


def test_use_is_recorded_once_per_interval_per_process(rag: RagServices) -> None:
    now = [1_000_000.0]
    activity = TenantActivity(rag.redis, f"test-{uuid.uuid4().hex[:8]}", touch_every_s=60, clock=lambda: now[0])

    activity.touch("a")
    now[0] += 30
    activity.touch("a")  # within the interval: not written
    assert activity.last_use(["a", "b"]) == {"a": 1_000_000.0, "b": None}
    now[0] += 31
    activity.touch("a")
    assert activity.last_use(["a"]) == {"a": 1_000_061.0}
    activity.forget("a")
    assert activity.last_use(["a"]) == {"a": None}


def test_a_tenant_with_no_recorded_use_starts_its_idle_clock_instead_of_being_offloaded(rag: RagServices) -> None:
    tenant = _new_tenant(rag)
    rag.activity.forget(tenant)  # as after a Redis that restarted empty, or a tenant activated by hand
    before = time.time()

    assert tenant not in offload_idle(rag.store, rag.activity, idle_s=1800)

    assert _status(rag, tenant) == {TenantActivityStatus.ACTIVE}
    recorded = rag.activity.last_use([tenant])[tenant]
    assert recorded is not None and recorded >= before
    # From then on it is an ordinary tenant: idle long enough, it goes.
    assert tenant in offload_idle(rag.store, rag.activity, idle_s=0)
    assert _status(rag, tenant) == {TenantActivityStatus.INACTIVE}
