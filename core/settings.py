"""The one settings object of Orchestrion.

Values come, highest priority first, from: explicit arguments, ``ORCHESTRION_*``
variables (nested with ``__``, e.g. ``ORCHESTRION_SERVER__PORT``), the standard
variable names other tools already use (``REDIS_URL``, ``LANGFUSE_SECRET_KEY``, ...),
the same two kinds of names in a ``.env`` file, then the defaults below.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources import DotenvType

ENV_PREFIX = "ORCHESTRION_"
NESTED_DELIMITER = "__"
HIDDEN = "**********"  # what pydantic prints for a SecretStr
_URL_PASSWORD = re.compile(r"(?P<keep>://[^/@:]*:)[^/@]*@")


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "orchestrion"


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "orchestrion"


class RedisSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="Redis/Valkey URL (standard name REDIS_URL). Unset: the embedded Valkey of `orchestrion up`.",
    )
    key_prefix: str = Field(default="orch", description="Prefix of every Redis key Orchestrion writes.")

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value


class WeaviateSettings(BaseModel):
    url: str | None = Field(
        default=None,
        description="Weaviate HTTP URL (standard name WEAVIATE_URL). Unset: the embedded weaviate-server.",
    )
    grpc_url: str | None = Field(
        default=None, description="Weaviate gRPC address host:port; defaults to the HTTP host on port 50051."
    )
    api_key: SecretStr | None = Field(default=None, description="Weaviate API key (standard name WEAVIATE_API_KEY).")
    binary: Path | None = Field(
        default=None, description="Path of a weaviate-server binary to run instead of the cached or built one."
    )
    version: str = Field(default="v1.39.0", description="weaviate-server version the launcher builds and caches.")
    build_timeout_s: float = Field(default=3000.0, gt=0, description="Give up building weaviate-server after this.")

    @field_validator("url")
    @classmethod
    def _http_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value


class CelerySettings(BaseModel):
    queues: list[str] = Field(
        default=["ingest", "tools", "runs", "default"], description="Queues a worker consumes unless told otherwise."
    )
    concurrency: int = Field(default=2, ge=1, description="Worker processes per `orchestrion worker`.")
    task_time_limit_s: int = Field(default=900, ge=1, description="Hard limit: the task's process is killed.")
    task_soft_time_limit_s: int = Field(default=840, ge=1, description="Soft limit: the task gets an exception.")
    visibility_timeout_s: int = Field(
        default=3600,
        ge=1,
        description="Seconds before Redis redelivers an unacknowledged task; must exceed the hard time limit.",
    )
    metrics_port: int = Field(
        default=9400, ge=0, le=65535, description="Prometheus port of a worker; 0 picks a free one."
    )


class ModelsSettings(BaseModel):
    openai_api_key: SecretStr | None = Field(default=None, description="OPENAI_API_KEY for an OpenAI-compatible API.")
    openai_base_url: str | None = Field(default=None, description="OPENAI_BASE_URL of an OpenAI-compatible API.")
    anthropic_api_key: SecretStr | None = Field(default=None, description="ANTHROPIC_API_KEY.")
    local_llm_url: str | None = Field(
        default=None,
        description="Base URL (ending in /v1) of a running local OpenAI-compatible server; unset: embedded llama.cpp.",
    )
    local_llm_urls: str | None = Field(
        default=None, description="Comma-separated base URLs of several local servers (set by `orchestrion up`)."
    )
    local_model_path: Path | None = Field(
        default=None, description="GGUF file for the embedded llama.cpp server; unset: the bundled Gemma 3 270M."
    )
    local_context_tokens: int = Field(default=4096, ge=256, description="Context window of the embedded server.")
    local_replicas: int = Field(
        default=2, ge=1, le=8, description="Embedded llama.cpp servers (both tiers balance across them)."
    )
    fleet_file: Path | None = Field(
        default=None,
        description="YAML/TOML/JSON fleet file: deployments, policy, tenant budgets (routing/fleet.py).",
    )

    @property
    def provider_configured(self) -> bool:
        return bool(self.openai_api_key or self.anthropic_api_key or self.openai_base_url)


class LangfuseSettings(BaseModel):
    public_key: str | None = Field(
        default=None, description="LANGFUSE_PUBLIC_KEY; with the secret key, tracing goes to Langfuse."
    )
    secret_key: SecretStr | None = Field(default=None, description="LANGFUSE_SECRET_KEY.")
    base_url: str = Field(default="https://cloud.langfuse.com", description="LANGFUSE_BASE_URL (or LANGFUSE_HOST).")
    otlp_endpoint: str | None = Field(
        default=None,
        description="Without Langfuse keys: OTLP/HTTP traces endpoint (standard OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).",
    )
    trace_file: Path | None = Field(
        default=None,
        description="Without keys or endpoint: JSON-lines span file; default <data_dir>/traces/spans.jsonl.",
    )
    environment: str = Field(default="development", description="Tracing environment tag.")
    capture: Literal["preview", "full", "none"] = Field(
        default="preview",
        description="What spans keep of inputs and outputs (questions, passages, answers): each string up to "
        "preview_chars (preview), whole (full), or only its length (none). Secrets are always redacted.",
    )
    preview_chars: int = Field(default=500, ge=0, le=100_000, description="capture=preview: characters kept.")

    @property
    def enabled(self) -> bool:
        return bool(self.public_key and self.secret_key)


class ServerSettings(BaseModel):
    host: str = Field(default="127.0.0.1", description="Interface the API and MCP HTTP servers listen on.")
    port: int = Field(
        default=8400, ge=0, le=65535, description="API port (MCP is served under /mcp). 0 picks a free one."
    )
    public_url: str | None = Field(
        default=None, description="URL clients reach the API at (behind a proxy); default http://host:port."
    )
    mcp_port: int = Field(
        default=8401, ge=0, le=65535, description="Port of a standalone `orchestrion mcp serve --http`."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description='Host header values MCP HTTP accepts besides loopback and public_url\'s ("name:*": any '
        "port), e.g. the service name other containers use. Others get 421 (DNS-rebinding protection).",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Origin header values MCP HTTP accepts besides loopback and public_url's (browser-based "
        'clients, e.g. ["https://ide.example.com"]). Other origins get 403; a request without Origin passes.',
    )
    log_format: Literal["json", "console"] = Field(default="json", description="Server log format.")
    backlog: int = Field(
        default=4096,
        ge=1,
        description="Listen backlog of `orchestrion serve`: connections the kernel holds while the API is busy "
        "accepting (thousands of reconnecting SSE clients at once). Capped by the kernel's net.core.somaxconn.",
    )


class RunApiSettings(BaseModel):
    """Admission, idempotency and streaming of the agent API's runs (api/agent/)."""

    runs_queue_limit: int = Field(
        default=500, ge=1, description="Runs waiting in the `runs` queue beyond which new runs get 429."
    )
    tenant_inflight_limit: int = Field(
        default=50, ge=1, description="Runs of one tenant pending or running at once beyond which its new runs get 429."
    )
    tenant_rate_per_s: float = Field(default=20.0, gt=0, description="Runs a tenant may start per second (refill).")
    tenant_burst: int = Field(default=40, ge=1, description="Runs a tenant may start at once (the bucket's size).")
    idempotency_ttl_s: int = Field(
        default=24 * 3600, ge=60, description="How long an Idempotency-Key and its stored answer are kept."
    )
    events_ttl_s: int = Field(
        default=3600, ge=10, description="How long a run's event stream stays readable after the run ends."
    )
    heartbeat_s: float = Field(default=5.0, gt=0, description="Quiet seconds after which a stream sends a comment.")
    stream_poll_ms: int = Field(
        default=100, ge=5, le=5000, description="How long the process's stream reader blocks on Redis per read."
    )
    dispatch_ahead: int = Field(
        default=4,
        ge=0,
        description="Runs kept waiting in the Celery `runs` queue; the rest wait in per-tenant backlogs and go to "
        "Celery a tenant at a time, in turn, as workers start runs, so one tenant's burst of runs does not hold "
        "up another's. 0: no bound, first come first served.",
    )


class RagSettings(BaseModel):
    embedding_model: str = Field(
        default="all-MiniLM-L6-v2",
        description="Embedding model: the bundled local all-MiniLM-L6-v2, or a model of embedding_base_url.",
    )
    embedding_base_url: str | None = Field(
        default=None, description="OpenAI-compatible /v1 base URL for embeddings; unset: the local model."
    )
    embedding_api_key: SecretStr | None = Field(default=None, description="API key for embedding_base_url.")
    embedding_dimension: int | None = Field(
        default=None, ge=1, description="Vector size of a remote embedding model (asked from the endpoint if unset)."
    )
    embedding_runtime: Literal["onnx", "torch"] = Field(
        default="onnx",
        description="What runs the local model: ONNX Runtime on CPU, or sentence-transformers on PyTorch (the `gpu` "
        "extra; CUDA when there is a device). Both give the same vectors, so a tenant needs no reindex to switch.",
    )
    embed_batch_size: int = Field(default=32, ge=1, le=2048, description="Texts per embedding call.")
    query_embed_threads: int = Field(
        default=1,
        ge=0,
        description="Threads of the local embedding model in the API and MCP servers (0 = one per core). "
        "Concurrent queries are embedded together, so one thread is enough and leaves the other cores to "
        "request handling; two threads on one short query cost 1.5x the CPU for 25% less latency.",
    )
    query_batch_size: int = Field(
        default=4,
        ge=1,
        le=2048,
        description="Most queries the API and MCP servers embed in one model call. Small batches keep the wait "
        "short for a query that arrives while one is running (it waits for that batch, then its own): at 16 "
        "clients a cap of 4 against 32 took p99 from 1.5x to 1.0x the baseline's, at higher throughput.",
    )
    query_model_process: bool = Field(
        default=True,
        description="The API and MCP servers run the local embedding model in a child process, where it does not "
        "wait for the server's GIL between operators (6 queries: 38 ms alone, 175 ms beside one busy Python thread).",
    )
    ingest_embed_threads: int = Field(
        default=0, ge=0, description="Threads of the local embedding model in ingest workers (0 = one per core)."
    )
    embedding_cache_ttl_s: int = Field(
        default=30 * 24 * 3600, ge=0, description="Lifetime of the Redis embedding cache (ingest); 0 = none."
    )
    query_cache_entries: int = Field(
        default=4096,
        ge=0,
        description="Query vectors each API or MCP server process keeps in memory for repeated queries; 0 = none.",
    )
    chunk_tokens: int = Field(default=200, ge=16, description="Target chunk size in embedding-model tokens.")
    chunk_overlap_tokens: int = Field(default=32, ge=0, description="Tokens shared by consecutive chunks.")
    max_document_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest document accepted.")
    max_metadata_keys: int = Field(default=32, ge=0, description="Most metadata keys one document may carry.")
    max_metadata_properties: int = Field(
        default=256,
        ge=0,
        description="Most filterable metadata properties (one per key and type) the chunk collection may hold, "
        "shared by every tenant: a document whose new keys would pass it is refused.",
    )
    max_documents_per_request: int = Field(
        default=100, ge=1, description="Most documents one upload (HTTP or MCP) may carry."
    )
    max_request_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1,
        description="Most document bytes one upload may carry, all documents together: what a server holds in "
        "memory for one request.",
    )
    ingest_queue_limit: int = Field(
        default=1000,
        ge=1,
        description="Most ingest jobs accepted and not yet started, held exactly across processes; a submission "
        "that would exceed it is told to retry later.",
    )
    ingest_tenant_queue_limit: int = Field(
        default=500,
        ge=1,
        description="Most ingest jobs of one tenant accepted and not yet started, held exactly like "
        "ingest_queue_limit, so one tenant's bulk ingest cannot fill the global limit and leave every other "
        "tenant with 429s; at or above ingest_queue_limit it is no limit of its own.",
    )
    ingest_dispatch_ahead: int = Field(
        default=2,
        ge=0,
        description="Ingest tasks kept waiting in the Celery queue; the rest wait in per-tenant backlogs and are "
        "handed to Celery a tenant at a time, in turn, as workers start tasks, so one tenant's bulk ingest does "
        "not hold up another's note. Each is a task a newcomer may wait behind; too few leave workers idle "
        "between tasks. 0: no bound, every job goes to Celery at once, first come first served.",
    )
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60, description="How long job status and idempotency keys live.")
    ingest_max_lost_runs: int = Field(
        default=3,
        ge=1,
        description="Runs of one ingest job whose worker process died mid-run (killed, out of memory) before the "
        "job fails: a document that kills its worker is redelivered this many times, not forever.",
    )
    ingest_sweep_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="How often a worker, as it finishes a job, drops the submitted bytes of jobs that ended without "
        "dropping them (a process died in between); each final state drops its job's bytes itself.",
    )
    tenant_idle_offload_s: float = Field(
        default=900.0,
        ge=0,
        description="Tenants unused this long are set INACTIVE in Weaviate (files closed; the next use wakes "
        "them); 0 = never. The API server checks every tenant_offload_check_s.",
    )
    tenant_offload_check_s: float = Field(default=60.0, gt=0, description="How often the API server looks.")
    progress_wait_s: float = Field(
        default=60.0, ge=0, description="How long MCP ingest_documents reports progress before returning job ids."
    )


class AgentSettings(BaseModel):
    servers_file: Path | None = Field(
        default=None,
        description="MCP servers the executor may use, in Claude Desktop's `mcpServers` shape (command/args/env "
        "for stdio, url/headers for streamable HTTP; plus long_running and requires_approval); default "
        "<data_dir>/mcp-servers.json when it exists.",
    )
    in_process_servers: list[Literal["retrieval", "ingest", "router"]] = Field(
        default=["retrieval"],
        description="Orchestrion's own MCP servers the agents call in-process. Retrieval only by default: a "
        "prompt injected in a document must not reach tools that change or delete data.",
    )
    planner: Literal["auto", "model", "fixed"] = Field(
        default="auto",
        description="auto: ask the model for a plan when its tier can plan (Deployment.can_plan), else the fixed "
        "plan (retrieve, then answer); model: always ask; fixed: never ask.",
    )
    checkpoint_url: str | None = Field(
        default=None,
        description="postgresql:// URL of the checkpoint database (compose); unset: SQLite in "
        "<data_dir>/checkpoints.sqlite.",
    )
    max_steps: int = Field(default=12, ge=1, description="Plan steps a run may execute (all plans together).")
    max_tool_calls: int = Field(default=8, ge=0, description="Tool calls a run may make (searches excluded).")
    max_tokens: int = Field(default=40_000, ge=1, description="Model tokens (in + out) a run may spend.")
    max_wall_s: float = Field(default=600.0, gt=0, description="Wall time a run may take, resumes included.")
    max_replans: int = Field(default=2, ge=0, description="New plans after a failed step or thin evidence.")
    max_parallel_steps: int = Field(default=4, ge=1, description="Independent steps run at once.")
    evidence_k: int = Field(default=5, ge=1, le=50, description="Chunks each search of a retrieve step asks for.")
    max_evidence: int = Field(default=8, ge=1, le=50, description="Evidence items the answer is written from.")
    answer_max_tokens: int = Field(default=400, ge=16, description="Output limit of the answer.")
    history_turns: int = Field(default=4, ge=0, description="Earlier question/answer pairs of a thread shown.")
    tool_timeout_s: float = Field(default=60.0, gt=0, description="Timeout of a tool call made in the run.")
    long_tool_timeout_s: float = Field(
        default=780.0,
        gt=0,
        description="Timeout of a long tool call (Celery); below celery.task_soft_time_limit_s, so the task that "
        "runs it is never cut short first.",
    )
    run_lease_s: float = Field(
        default=20.0,
        ge=2,
        description="A running run's lease, renewed every third of it: a run whose process died is resumed from "
        "its last checkpoint by another process once its lease expires.",
    )
    recovery_interval_s: float = Field(default=5.0, gt=0, description="How often a process looks for such runs.")
    record_ttl_s: int = Field(
        default=30 * 24 * 3600, ge=60, description="How long run, thread and long-call records live in Redis."
    )


class TenantsSettings(BaseModel):
    default: str = Field(default="default", description="Tenant of local callers (stdio MCP, the CLI).")
    tokens_file: Path | None = Field(
        default=None, description="Bearer token -> tenant map; default <data_dir>/tenants.json."
    )
    static_tokens: dict[str, str] = Field(
        default_factory=dict,
        description="Extra bearer token -> tenant pairs (e.g. from a secret store), beside the tokens file.",
    )


_STANDARD_NAMES: dict[str, tuple[str, str]] = {
    "REDIS_URL": ("redis", "url"),
    "WEAVIATE_URL": ("weaviate", "url"),
    "WEAVIATE_API_KEY": ("weaviate", "api_key"),
    "OPENAI_API_KEY": ("models", "openai_api_key"),
    "OPENAI_BASE_URL": ("models", "openai_base_url"),
    "ANTHROPIC_API_KEY": ("models", "anthropic_api_key"),
    "LANGFUSE_PUBLIC_KEY": ("langfuse", "public_key"),
    "LANGFUSE_SECRET_KEY": ("langfuse", "secret_key"),
    "LANGFUSE_HOST": ("langfuse", "base_url"),
    "LANGFUSE_BASE_URL": ("langfuse", "base_url"),  # after LANGFUSE_HOST: the newer name wins
    "LANGFUSE_TRACING_ENVIRONMENT": ("langfuse", "environment"),
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ("langfuse", "otlp_endpoint"),
}


class _StandardNamesSource(PydanticBaseSettingsSource):
    """Reads the well-known names (REDIS_URL, ...) from the environment and the .env file."""

    def __init__(self, settings_cls: type[BaseSettings], env_file: DotenvType | None) -> None:
        super().__init__(settings_cls)
        self._env_file = env_file

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        values: dict[str, str] = {}
        if isinstance(self._env_file, str | Path) and Path(self._env_file).is_file():
            from dotenv import dotenv_values

            values.update({k: v for k, v in dotenv_values(self._env_file).items() if v is not None})
        values.update(os.environ)
        found: dict[str, Any] = {}
        for name, (section, field) in _STANDARD_NAMES.items():
            if values.get(name):
                found.setdefault(section, {})[field] = values[name]
        return found


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        extra="ignore",
        validate_default=True,
    )

    data_dir: Path = Field(default_factory=_default_data_dir, description="State of the embedded stack and its URLs.")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Built binaries and assembled models.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="Log level.")
    redis: RedisSettings = Field(default_factory=RedisSettings)
    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    langfuse: LangfuseSettings = Field(default_factory=LangfuseSettings)
    server: ServerSettings = Field(default_factory=ServerSettings)
    tenants: TenantsSettings = Field(default_factory=TenantsSettings)
    rag: RagSettings = Field(default_factory=RagSettings)
    agents: AgentSettings = Field(default_factory=AgentSettings)
    runs: RunApiSettings = Field(default_factory=RunApiSettings)

    @field_validator("celery")
    @classmethod
    def _visibility_exceeds_time_limit(cls, value: CelerySettings) -> CelerySettings:
        if value.visibility_timeout_s <= value.task_time_limit_s:
            raise ValueError(
                f"visibility_timeout_s ({value.visibility_timeout_s}) must exceed task_time_limit_s "
                f"({value.task_time_limit_s}), or Redis redelivers tasks that are still running"
            )
        if value.task_soft_time_limit_s >= value.task_time_limit_s:
            raise ValueError("task_soft_time_limit_s must be below task_time_limit_s")
        return value

    @model_validator(mode="after")
    def _long_calls_fit_in_tasks(self) -> Settings:
        if self.agents.long_tool_timeout_s >= self.celery.task_soft_time_limit_s:
            raise ValueError(
                f"agents.long_tool_timeout_s ({self.agents.long_tool_timeout_s:g}) must be below "
                f"celery.task_soft_time_limit_s ({self.celery.task_soft_time_limit_s}): the task would be cut first"
            )
        return self

    @field_validator("rag")
    @classmethod
    def _overlap_below_chunk(cls, value: RagSettings) -> RagSettings:
        if value.chunk_overlap_tokens >= value.chunk_tokens:
            raise ValueError("chunk_overlap_tokens must be below chunk_tokens")
        return value

    def redacted(self) -> dict[str, Any]:
        """The settings as JSON data with every secret hidden: keys (SecretStr), static tokens (the tenants
        are shown, not the tokens) and passwords inside URLs (redis://:pw@host, postgresql://u:pw@host)."""
        data = self.model_dump(mode="json")
        tenants = sorted(self.tenants.static_tokens.values())
        data["tenants"]["static_tokens"] = {f"{HIDDEN}#{n}": tenant for n, tenant in enumerate(tenants, 1)}
        return _hide_url_passwords(data)  # type: ignore[no-any-return]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        standard = _StandardNamesSource(settings_cls, settings_cls.model_config.get("env_file"))
        return init_settings, env_settings, standard, dotenv_settings


def _hide_url_passwords(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _hide_url_passwords(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_hide_url_passwords(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(rf"\g<keep>{HIDDEN}@", value)
    return value


def env_name(location: tuple[str | int, ...]) -> str:
    """The ORCHESTRION_* variable that sets the field at a validation-error location."""
    parts = [str(p) for p in location if not isinstance(p, int)]
    return ENV_PREFIX + NESTED_DELIMITER.join(p.upper() for p in parts)


def describe_validation_error(error: ValidationError) -> str:
    """One line naming each invalid field by the variable that sets it."""
    problems = []
    for item in error.errors():
        loc = tuple(item["loc"])
        standard = [n for n, target in _STANDARD_NAMES.items() if target == tuple(str(p) for p in loc[:2])]
        names = " or ".join([env_name(loc), *standard])
        given = item.get("input")
        shown = f" (got {given!r})" if isinstance(given, str | int | float) else ""
        problems.append(f"{names}: {item['msg']}{shown}")
    return "invalid settings: " + "; ".join(problems)


_override: ContextVar[Settings | None] = ContextVar("settings_override", default=None)
_loaded: Settings | None = None


def get_settings() -> Settings:
    """The process's settings, loaded once; an active `settings_override` wins."""
    global _loaded
    override = _override.get()
    if override is not None:
        return override
    if _loaded is None:
        _loaded = Settings()
    return _loaded


@contextmanager
def settings_override(**values: Any) -> Iterator[Settings]:
    """Run a block with settings built from `values` on top of the environment."""
    token = _override.set(Settings(**values))
    try:
        yield _override.get()  # type: ignore[misc]
    finally:
        _override.reset(token)
