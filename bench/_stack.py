"""A private Orchestrion stack for one benchmark run, started with the launcher's own code.

Valkey and weaviate-server run once per run in a temporary directory; on top of them a
benchmark starts "deployments": N real `orchestrion worker` processes and optionally a real
`orchestrion serve` (API + MCP), all sharing one fresh Redis key prefix. A fresh prefix means
fresh Celery queues, job keys and a cold embedding cache, so phases never help each other.
Every process started here is stopped in a finally block, in reverse order of start.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from orchestrion.launcher import services
from orchestrion.launcher.ports import PortBook
from orchestrion.launcher.process import ManagedProcess
from orchestrion.launcher.supervisor import launch, launch_together
from rag.services import RagServices
from tests.conftest import free_port, settings_from, start_worker  # also drops REDIS_URL & co. from os.environ
from workers.client import QueueClient

CONSOLE = Console(stderr=True)
# Bench processes must never pick up a developer's own stack.
for _name in ("REDIS_URL", "WEAVIATE_URL", "WEAVIATE_API_KEY", "ORCHESTRION_DATA_DIR"):
    os.environ.pop(_name, None)


@dataclass
class Deployment:
    """Our own processes on the shared services, under one Redis key prefix."""

    env: dict[str, str]
    workers: list[ManagedProcess] = field(default_factory=list)
    api: ManagedProcess | None = None
    api_url: str = ""
    rags: list[RagServices] = field(default_factory=list)
    queues: list[QueueClient] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        return self.env["ORCHESTRION_REDIS__KEY_PREFIX"]

    def open_rag(self) -> RagServices:
        """RAG services in this process, wired as the API wires them (ingest jobs go to the workers)."""
        from workers.client import open_rag_with_queue

        rag, queue = open_rag_with_queue(settings_from(self.env))
        self.rags.append(rag)
        self.queues.append(queue)
        return rag

    def ingest_depth(self) -> int:
        """Tasks waiting in this deployment's ingest queue, as the API's backpressure check reads it
        (workers.app.queue_depth). That opens a broker connection per call (~2.3 ms CPU); use
        `ingest_depth_fast` to sample often."""
        return self.queues[0].ingest_depth()

    def ingest_depth_fast(self) -> int:
        """The same number with one LLEN on the queue's list (Celery's key: `<prefix>:<queue>`)."""
        return int(self.rags[0].redis.llen(f"{self.prefix}:ingest"))

    def stop(self) -> None:
        for rag in self.rags:
            rag.close()
        self.rags.clear()
        for queue in self.queues:
            queue.app.close()
        self.queues.clear()
        for process in [*([self.api] if self.api else []), *reversed(self.workers)]:
            process.stop()
        self.workers.clear()
        self.api = None


class BenchStack:
    def __init__(self, root: Path, console: Console = CONSOLE) -> None:
        self.root = root
        self.console = console
        self.logs = root / "logs"
        self.services: list[ManagedProcess] = []
        self.deployments: list[Deployment] = []
        self.urls: dict[str, str] = {}

    def start_services(self) -> None:
        """Valkey and weaviate-server (the cached build), on free ports, data in the temp dir."""
        raise_open_files_limit(self.console)
        settings = settings_from(self._base_env("unused"))
        ports = PortBook(self.root)
        specs = [services.redis_spec(settings, ports), services.weaviate_spec(settings, ports, self.console)]
        self.services += launch_together(specs, self.logs, self.console)
        for spec in specs:
            self.urls.update(spec.urls)

    def _base_env(self, prefix: str) -> dict[str, str]:
        return {
            **os.environ,
            "REDIS_URL": self.urls.get("redis_url", "redis://127.0.0.1:1/0"),
            "WEAVIATE_URL": self.urls.get("weaviate_url", "http://127.0.0.1:1"),
            "ORCHESTRION_WEAVIATE__GRPC_URL": self.urls.get("weaviate_grpc", "127.0.0.1:1"),
            "ORCHESTRION_DATA_DIR": str(self.root / "app"),
            "ORCHESTRION_REDIS__KEY_PREFIX": prefix,
        }

    def deploy(
        self, *, workers: int = 1, concurrency: int = 1, api: bool = False, extra_env: dict[str, str] | None = None
    ) -> Deployment:
        """Start `workers` worker processes (each with `concurrency` pool processes) and maybe the API server,
        under a fresh key prefix; `extra_env` goes to every one of them (e.g. a queue limit)."""
        env = {**self._base_env(f"bench-{uuid.uuid4().hex[:8]}"), **(extra_env or {})}
        deployment = Deployment(env)
        self.deployments.append(deployment)
        for _ in range(workers):
            process, _handle = start_worker(env, self.logs, concurrency=concurrency)
            deployment.workers.append(process)
        if api:
            deployment.api, deployment.api_url = self._start_api(env)
        return deployment

    def _start_api(self, env: dict[str, str]) -> tuple[ManagedProcess, str]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        spec = services.ServiceSpec(
            name=f"api-{env['ORCHESTRION_REDIS__KEY_PREFIX']}",
            argv=[sys.executable, "-m", "orchestrion", "serve"],
            env={**env, "ORCHESTRION_SERVER__PORT": str(port)},
            healthy=services.http_ok(f"{url}/healthz"),
            start_timeout_s=180.0,
        )
        return launch(spec, self.logs, self.console), url

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by this process and every process group started here.

        On a shared, noisy machine wall time swings by 2x while CPU time per unit of work stays within a few
        percent, so benchmarks report it beside wall-clock rates. Exited processes' time is not counted.
        """
        return sum(self.cpu_by_role().values())

    def cpu_by_role(self) -> dict[str, float]:
        """CPU seconds so far per role: bench (this process), redis, weaviate, workers, api."""
        roles = {p.pid: p.name for p in self.services}
        for deployment in self.deployments:
            roles.update({p.pid: "workers" for p in deployment.workers})
            if deployment.api is not None:
                roles[deployment.api.pid] = "api"
        by_group = group_cpu_seconds(set(roles))
        out = {"bench": 0.0, "redis": 0.0, "weaviate": 0.0, "workers": 0.0, "api": 0.0}
        for pgid, seconds in by_group.items():
            out[roles[pgid]] += seconds
        out["bench"] = time.process_time()
        return out

    def open_files(self, service: str) -> int:
        """File descriptors a service process holds now."""
        process = next(p for p in self.services if p.name == service)
        return sum(1 for _ in Path(f"/proc/{process.pid}/fd").iterdir())

    def stop(self) -> None:
        while self.deployments:
            self.deployments.pop().stop()
        while self.services:
            self.services.pop().stop()


OPEN_FILES_WANTED = 262_144


def raise_open_files_limit(console: Console) -> None:
    """Weaviate keeps several files open per tenant shard (1,000 tenants x 2 collections is over 20,000 files):
    give this process and its children the open-files limit a Weaviate host is expected to have, where allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= OPEN_FILES_WANTED:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES_WANTED, max(hard, OPEN_FILES_WANTED)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    console.print(f"[dim]open-files limit {soft} -> {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}[/dim]")


def group_cpu_seconds(groups: set[int]) -> dict[int, float]:
    """utime + stime per process group in `groups`, summed over its live members (read from /proc)."""
    ticks = dict.fromkeys(groups, 0)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces
        pgid = int(fields[2])  # fields: state ppid pgrp ... utime=11 stime=12
        if pgid in ticks:
            ticks[pgid] += int(fields[11]) + int(fields[12])
    hz = os.sysconf("SC_CLK_TCK")
    return {pgid: t / hz for pgid, t in ticks.items()}


def add_env_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment for the worker and API processes (repeatable; for experiments, "
        "e.g. OMP_WAIT_POLICY=PASSIVE)",
    )


def env_from(args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.env)


@contextmanager
def bench_stack(*, keep: bool = False, console: Console = CONSOLE) -> Iterator[BenchStack]:
    """Valkey + Weaviate in a temp dir; everything started inside is stopped on the way out."""
    root = Path(tempfile.mkdtemp(prefix="orch-bench-"))
    stack = BenchStack(root, console)
    try:
        stack.start_services()
        yield stack
    finally:
        stack.stop()
        if keep:
            console.print(f"[dim]kept {root} (logs in {root / 'logs'})[/dim]")
        else:
            shutil.rmtree(root, ignore_errors=True)
