"""Build the RAG services once per process (in a lifespan or worker init), never at import."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import redis
import weaviate
from weaviate import WeaviateClient
from weaviate.classes.init import AdditionalConfig, Auth, Timeout

from core.settings import Settings
from core.stack import Endpoints, resolve_endpoints
from core.tenancy import TenantRegistry, tenant_registry
from rag.activity import TenantActivity
from rag.chunking import Chunker, HFTokenCounter, bundled_model_dir
from rag.embedding import Embedder, build_embedder
from rag.ingest import IngestService
from rag.jobs import JobStore
from rag.store import ChunkStore


@dataclass
class RagServices:
    settings: Settings
    redis: redis.Redis
    weaviate: WeaviateClient
    embedder: Embedder
    store: ChunkStore
    jobs: JobStore
    ingest: IngestService
    registry: TenantRegistry
    activity: TenantActivity

    def close(self) -> None:
        self.embedder.close()  # in servers: ends the model's child process now, not at exit
        self.weaviate.close()
        self.redis.close()


def connect_weaviate(settings: Settings, endpoints: Endpoints) -> WeaviateClient:
    http = httpx.URL(endpoints.weaviate_url)
    grpc = endpoints.found.get("weaviate_grpc") or f"{http.host}:50051"
    grpc_host, _, grpc_port = grpc.rpartition(":")
    key = settings.weaviate.api_key
    return weaviate.connect_to_custom(
        http_host=http.host,
        http_port=http.port or (443 if http.scheme == "https" else 80),
        http_secure=http.scheme == "https",
        grpc_host=grpc_host,
        grpc_port=int(grpc_port),
        grpc_secure=http.scheme == "https",
        auth_credentials=Auth.api_key(key.get_secret_value()) if key else None,
        additional_config=AdditionalConfig(timeout=Timeout(init=10, query=60, insert=120)),
    )


def open_rag(
    settings: Settings, *, enqueue: Callable[[str, Sequence[str]], None], serving: bool = False
) -> RagServices:
    """Connect to Redis and Weaviate and wire the services; `enqueue` (tenant, job ids) comes from the queue
    adapter, so this layer never imports Celery. `serving`: see build_embedder."""
    endpoints = resolve_endpoints(settings)
    client = redis.Redis.from_url(endpoints.redis_url)
    prefix = settings.redis.key_prefix
    embedder = build_embedder(settings.rag, client, prefix, serving)
    wv = connect_weaviate(settings, endpoints)
    activity = TenantActivity(client, prefix)
    store = ChunkStore(
        wv, embedder.spec, on_use=activity.touch, max_meta_properties=settings.rag.max_metadata_properties
    )
    store.ensure_collections()
    counter = HFTokenCounter.from_model_dir(bundled_model_dir(), max_seq_length=256)
    chunker = Chunker(counter, settings.rag.chunk_tokens, settings.rag.chunk_overlap_tokens)
    jobs = JobStore(
        client, prefix, settings.rag.job_ttl_s, document_lock_wait_s=settings.celery.task_soft_time_limit_s / 2
    )
    ingest = IngestService(settings.rag, jobs, store, embedder, chunker, enqueue)
    return RagServices(settings, client, wv, embedder, store, jobs, ingest, tenant_registry(settings), activity)
