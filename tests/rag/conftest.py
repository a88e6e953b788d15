"""Fixtures of the RAG tests: RAG services under a key prefix of their own, with their own queue limits."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

import pytest

from rag.ingest import IngestService, Submission
from rag.jobs import ENQUEUE_GRACE_S, LINE_GRACE_S, JobStore
from rag.services import RagServices
from workers.client import QueueClient


def text_of(reply: object) -> str:
    """A Redis reply of this client, which never decodes: bytes (redis-py's types allow more)."""
    assert isinstance(reply, bytes), reply
    return reply.decode()


def note(name: str) -> Submission:
    return Submission(f"# {name}\n\nThe document called {name}.".encode(), f"{name}.md")


class Private:
    """RAG services under a key prefix of their own, with their own queue limit, on the session's Redis and
    Weaviate (the tenant fixture provisions there)."""

    def __init__(
        self,
        rag: RagServices,
        prefix: str,
        limit: int,
        ttl_s: int | None = None,
        enqueue_grace_s: float = ENQUEUE_GRACE_S,
        line_grace_s: float = LINE_GRACE_S,
        tenant_limit: int | None = None,
    ) -> None:
        self.prefix = prefix
        limits = {"ingest_queue_limit": limit, "ingest_tenant_queue_limit": tenant_limit or limit}
        self.settings = rag.settings.model_copy(
            update={"redis": rag.settings.redis.model_copy(update={"key_prefix": prefix}),
                    "rag": rag.settings.rag.model_copy(update=limits)}
        )  # fmt: skip
        self.queue = QueueClient(self.settings, rag.settings.redis.url or "")
        self.redis = rag.redis
        self.rag = rag
        self.limit = limit
        self.jobs = JobStore(rag.redis, prefix, ttl_s or rag.settings.rag.job_ttl_s, enqueue_grace_s, line_grace_s)

    def service(self, enqueue: Callable[[str, Sequence[str]], None] | None = None) -> IngestService:
        rag = self.rag
        return IngestService(self.settings.rag, self.jobs, rag.store, rag.embedder, rag.ingest.chunker,
                             enqueue or self.queue.enqueue_ingest)  # fmt: skip

    def services(self) -> RagServices:
        """The same, as RagServices, for the shared helpers."""
        return replace(self.rag, settings=self.settings, jobs=self.jobs, ingest=self.service())

    def queued_job_ids(self) -> list[str]:
        """The job id of every ingest task waiting in the broker (Celery's message bodies, as the worker reads
        them), then of every job waiting in a tenant's backlog to be dispatched there (workers/fair_queue.py)."""
        messages = self.redis.lrange(f"{self.prefix}:ingest", 0, -1)
        ids = [json.loads(base64.b64decode(json.loads(m)["body"]))[0][0] for m in messages]
        for backlog in self.redis.scan_iter(match=f"{self.prefix}:fair:ingest:backlog:*"):
            ids += [text_of(i) for i in self.redis.lrange(backlog, 0, -1)]
        return ids

    def in_broker(self) -> int:
        return int(self.redis.llen(f"{self.prefix}:ingest"))

    def admitted(self) -> set[str]:
        return self._members("ingest:admitted")

    def unconfirmed(self) -> set[str]:
        return self._members("ingest:enqueuing")

    def _members(self, key: str) -> set[str]:
        return {text_of(m) for m in self.redis.zrange(f"{self.prefix}:{key}", 0, -1)}

    def keys(self, kind: str) -> int:
        return len(self.redis.keys(f"{self.prefix}:{kind}:*"))

    def env(self, stack_env: dict[str, str]) -> dict[str, str]:
        """Environment of processes that work on this prefix."""
        rag = self.settings.rag
        return {
            **stack_env,
            "ORCHESTRION_REDIS__KEY_PREFIX": self.prefix,
            "ORCHESTRION_RAG__INGEST_QUEUE_LIMIT": str(rag.ingest_queue_limit),
            "ORCHESTRION_RAG__INGEST_TENANT_QUEUE_LIMIT": str(rag.ingest_tenant_queue_limit),
        }


@pytest.fixture
def private(rag: RagServices, key_prefix: str) -> Iterator[Callable[..., Private]]:
    made: list[Private] = []

    def make(
        limit: int,
        ttl_s: int | None = None,
        enqueue_grace_s: float = ENQUEUE_GRACE_S,
        line_grace_s: float = LINE_GRACE_S,
        tenant_limit: int | None = None,
    ) -> Private:
        made.append(Private(rag, key_prefix, limit, ttl_s, enqueue_grace_s, line_grace_s, tenant_limit))
        return made[-1]

    yield make
    for p in made:
        p.queue.app.close()


@pytest.fixture
def other_tenant(rag: RagServices) -> str:
    """A second freshly provisioned tenant of this test's own."""
    from orchestrion.knowledge import provision

    name = f"o-{uuid.uuid4().hex[:10]}"
    provision(rag, name)
    return name
