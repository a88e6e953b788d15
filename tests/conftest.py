"""Real services for the test session, started by the launcher's own code.

Each service is started once per session and shared; tests isolate themselves by
key prefix (Redis, Celery) or data dir. A service that cannot be built or started
fails the tests that need it, loudly: nothing here skips.
"""

from __future__ import annotations

import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from celery import Celery
from rich.console import Console

from core.settings import Settings
from orchestrion.launcher import services
from orchestrion.launcher.ports import PortBook
from orchestrion.launcher.supervisor import launch
from tests.otlp_receiver import OtlpReceiver
from workers.app import create_celery_app, worker_answers

CONSOLE = Console(stderr=True)

# The test process must not pick up a developer's own stack or keys.
for _name in (
    "REDIS_URL",
    "WEAVIATE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "LANGFUSE_PUBLIC_KEY",
    "LANGFUSE_SECRET_KEY",
    "ORCHESTRION_DATA_DIR",
):
    os.environ.pop(_name, None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def service_settings(services_dir: Path) -> Settings:
    # cache_dir stays the user's: the weaviate-server build and the model are shared with `orchestrion up`.
    return Settings(data_dir=services_dir)


@pytest.fixture(scope="session")
def valkey(service_settings: Settings, services_dir: Path) -> Iterator[str]:
    """URL of a real Valkey server."""
    spec = services.redis_spec(service_settings, PortBook(services_dir))
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield spec.urls["redis_url"]
    process.stop()


@pytest.fixture(scope="session")
def weaviate(service_settings: Settings, services_dir: Path) -> Iterator[dict[str, str]]:
    """URLs (weaviate_url, weaviate_grpc) of a real weaviate-server."""
    spec = services.weaviate_spec(service_settings, PortBook(services_dir), CONSOLE)
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield spec.urls
    process.stop()


@pytest.fixture(scope="session")
def local_llm(service_settings: Settings, services_dir: Path) -> Iterator[str]:
    """Base URL (…/v1) of the real llama.cpp server with the bundled model."""
    spec = services.llm_spec(service_settings, PortBook(services_dir), CONSOLE)
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield spec.urls["llm_base_url"]
    process.stop()


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver()
    yield receiver
    receiver.close()


@dataclass(frozen=True)
class WorkerHandle:
    settings: Settings
    app: Celery
    hostname: str
    metrics_url: str
    redis_url: str


@pytest.fixture(scope="session")
def celery_worker(valkey: str, services_dir: Path, otlp: OtlpReceiver) -> Iterator[WorkerHandle]:
    """A real `orchestrion worker` process; its spans go to the session's OTLP receiver."""
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    data_dir = services_dir / "worker"
    metrics_port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": valkey,
        "ORCHESTRION_DATA_DIR": str(data_dir),
        "ORCHESTRION_REDIS__KEY_PREFIX": prefix,
        "ORCHESTRION_CELERY__METRICS_PORT": str(metrics_port),
        "ORCHESTRION_LANGFUSE__OTLP_ENDPOINT": f"{otlp.url}/v1/traces",
    }
    settings = Settings(data_dir=data_dir, redis={"url": valkey, "key_prefix": prefix})
    app = create_celery_app(settings, valkey)
    hostname = f"{prefix}@localhost"
    spec = services.ServiceSpec(
        name="worker",
        argv=[sys.executable, "-m", "orchestrion", "worker", "--hostname", hostname, "--concurrency", "2"],
        env=env,
        healthy=lambda: worker_answers(app, hostname),
        start_timeout_s=90.0,
    )
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield WorkerHandle(settings, app, hostname, f"http://127.0.0.1:{metrics_port}/metrics", valkey)
    process.stop()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own."""
    return f"t-{uuid.uuid4().hex[:10]}"
