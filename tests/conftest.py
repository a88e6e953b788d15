"""Real services for the test session, started by the launcher's own code.

Each service is started once per session and shared; tests isolate themselves by
key prefix (Redis, Celery) or data dir. A service that cannot be built or started
fails the tests that need it, loudly: nothing here skips.
"""

from __future__ import annotations

import os
import shutil
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
from orchestrion.launcher.process import ManagedProcess
from orchestrion.launcher.supervisor import launch
from rag.services import RagServices
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


def _prune_bytecode_of_vanished_sources(prefix: Path) -> None:
    """The bytecode cache mirrors absolute source paths: drop the trees of checkouts and venvs that are
    gone (a CI machine clones afresh each time), so it does not grow without end."""
    for root, dirs, _files in os.walk(prefix):
        source = Path("/") / Path(root).relative_to(prefix)
        for name in list(dirs):
            if not (source / name).is_dir():
                shutil.rmtree(Path(root, name), ignore_errors=True)
                dirs.remove(name)


# Where PYTHONDONTWRITEBYTECODE is set (sandboxed machines often set it), every process the tests start
# (workers, API servers, `orchestrion up` and its children, CLI calls) compiles torch, transformers and
# celery from source again: about 8 s of CPU each, dozens of times a session. Their bytecode goes to the
# cache dir instead, which keeps the checkout and the venv as free of .pyc files as the setting intends.
if os.environ.pop("PYTHONDONTWRITEBYTECODE", None):
    if not os.environ.get("PYTHONPYCACHEPREFIX"):
        os.environ["PYTHONPYCACHEPREFIX"] = str(Settings().cache_dir / "pycache")
        _prune_bytecode_of_vanished_sources(Path(os.environ["PYTHONPYCACHEPREFIX"]))
    sys.pycache_prefix = os.environ["PYTHONPYCACHEPREFIX"]
    sys.dont_write_bytecode = False


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
def stack_env(valkey: str, weaviate: dict[str, str], services_dir: Path, otlp: OtlpReceiver) -> dict[str, str]:
    """Environment of our own processes in this session: real services, a key prefix of their own."""
    return {
        **os.environ,
        "REDIS_URL": valkey,
        "WEAVIATE_URL": weaviate["weaviate_url"],
        "ORCHESTRION_WEAVIATE__GRPC_URL": weaviate["weaviate_grpc"],
        "ORCHESTRION_DATA_DIR": str(services_dir / "app"),
        "ORCHESTRION_REDIS__KEY_PREFIX": f"test-{uuid.uuid4().hex[:8]}",
        "ORCHESTRION_LANGFUSE__OTLP_ENDPOINT": f"{otlp.url}/v1/traces",
    }


def settings_from(env: dict[str, str]) -> Settings:
    """The Settings the processes started with `env` see."""
    return Settings(
        data_dir=Path(env["ORCHESTRION_DATA_DIR"]),
        redis={"url": env["REDIS_URL"], "key_prefix": env["ORCHESTRION_REDIS__KEY_PREFIX"]},
        weaviate={"url": env["WEAVIATE_URL"], "grpc_url": env["ORCHESTRION_WEAVIATE__GRPC_URL"]},
    )


def start_worker(env: dict[str, str], log_dir: Path, concurrency: int = 2) -> tuple[ManagedProcess, WorkerHandle]:
    """A real `orchestrion worker` process with `env`; returns it once it answers pings."""
    settings = settings_from(env)
    metrics_port = free_port()
    app = create_celery_app(settings, env["REDIS_URL"])
    hostname = f"{env['ORCHESTRION_REDIS__KEY_PREFIX']}-{uuid.uuid4().hex[:4]}@localhost"
    spec = services.ServiceSpec(
        name=f"worker-{hostname.split('@', maxsplit=1)[0]}",
        argv=[sys.executable, "-m", "orchestrion", "worker", "--hostname", hostname, "--concurrency", str(concurrency)],
        env={**env, "ORCHESTRION_CELERY__METRICS_PORT": str(metrics_port)},
        healthy=lambda: worker_answers(app, hostname),
        start_timeout_s=90.0,
    )
    process = launch(spec, log_dir, CONSOLE)
    return process, WorkerHandle(settings, app, hostname, f"http://127.0.0.1:{metrics_port}/metrics", env["REDIS_URL"])


def agent_env(local_llm: str) -> dict[str, str]:
    """Agent runs on the real local model, with short answers (the tests are about the API, not the prose) and a
    short lease, so a run whose worker is killed is resumed within seconds."""
    return {
        "ORCHESTRION_MODELS__LOCAL_LLM_URL": local_llm,
        "ORCHESTRION_AGENTS__ANSWER_MAX_TOKENS": "64",
        "ORCHESTRION_AGENTS__RUN_LEASE_S": "6",
        "ORCHESTRION_AGENTS__RECOVERY_INTERVAL_S": "1",
        "ORCHESTRION_RUNS__HEARTBEAT_S": "1",
    }


@pytest.fixture(scope="session")
def celery_worker(stack_env: dict[str, str], services_dir: Path, local_llm: str) -> Iterator[WorkerHandle]:
    """The session's real `orchestrion worker`; its spans go to the session's OTLP receiver, and its agent runs
    use the real local model."""
    process, handle = start_worker({**stack_env, **agent_env(local_llm)}, services_dir / "logs")
    yield handle
    process.stop()


@pytest.fixture
def key_prefix() -> str:
    """A Redis key prefix of this test's own."""
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def rag(stack_env: dict[str, str], celery_worker: WorkerHandle) -> Iterator[RagServices]:
    """RAG services wired as the API wires them; their ingest jobs run on the session's worker."""
    from workers.client import open_rag_with_queue

    services_, _queue = open_rag_with_queue(settings_from(stack_env))
    yield services_
    services_.close()


@pytest.fixture
def tenant(rag: RagServices) -> str:
    """A freshly provisioned tenant of this test's own."""
    from orchestrion.knowledge import provision

    name = f"t-{uuid.uuid4().hex[:10]}"
    provision(rag, name)
    return name


@dataclass(frozen=True)
class ApiServer:
    url: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def api_server(
    stack_env: dict[str, str], celery_worker: WorkerHandle, services_dir: Path, local_llm: str
) -> Iterator[ApiServer]:
    """A real `orchestrion serve` process (HTTP API and MCP at /mcp) on the session's services,
    with the real local model behind its router."""
    process, server = start_api({**stack_env, **agent_env(local_llm)}, services_dir / "logs", "api")
    yield server
    process.stop()


def start_api(env: dict[str, str], log_dir: Path, name: str) -> tuple[ManagedProcess, ApiServer]:
    port = free_port()
    env = {**env, "ORCHESTRION_SERVER__PORT": str(port)}
    url = f"http://127.0.0.1:{port}"
    spec = services.ServiceSpec(
        name=name,
        argv=[sys.executable, "-m", "orchestrion", "serve"],
        env=env,
        healthy=services.http_ok(f"{url}/healthz"),
        start_timeout_s=240.0,  # the embedder's and SDKs' imports take a minute on a contended 2-core machine
    )
    return launch(spec, log_dir, CONSOLE), ApiServer(url, env)


def _postgres_bin() -> Path:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (Debian package postgresql): .ci/run installs it")
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres_url(services_dir: Path) -> Iterator[str]:
    """URL of a real PostgreSQL server (the checkpointer of compose), run as the `postgres` user when we are root."""
    import subprocess
    import tempfile

    # Not under pytest's temp dir: that is private to root, and the server runs as `postgres`.
    bin_dir, data = _postgres_bin(), Path(tempfile.mkdtemp(prefix="orchestrion-pg-")) / "data"
    data.parent.chmod(0o755)
    data.mkdir()
    as_postgres = ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups"] if os.getuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres", "postgres")
    subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "orchestrion", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True, timeout=120)  # fmt: skip
    port = free_port()
    url = f"postgresql://orchestrion@127.0.0.1:{port}/postgres"

    def ready() -> bool:
        import psycopg

        try:
            with psycopg.connect(url, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    spec = services.ServiceSpec(
        name="postgres",
        argv=[*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
              "-k", str(data)],
        env=dict(os.environ),
        healthy=ready,
        start_timeout_s=60.0,
    )  # fmt: skip
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield url
    process.stop()
    shutil.rmtree(data.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def embeddings_llm(service_settings: Settings, services_dir: Path) -> Iterator[str]:
    """Base URL of a real llama.cpp server answering /v1/embeddings (Gemma 3 270M): a second,
    genuinely different embedding model for the consistency tests."""
    spec = services.llm_spec(service_settings, PortBook(services_dir), CONSOLE, embeddings=True)
    process = launch(spec, services_dir / "logs", CONSOLE)
    yield spec.urls["llm_base_url"]
    process.stop()
