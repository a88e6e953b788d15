"""Prometheus metrics: one registry per process, shared across a Celery worker's pool.

A prefork worker's tasks run in child processes; prometheus_client's multiprocess
mode (PROMETHEUS_MULTIPROC_DIR, set before prometheus_client is first imported)
lets the worker's single exporter report what every child recorded.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(path: Path) -> None:
    """Must run before anything imports prometheus_client; stale files from a dead worker are removed."""
    if "prometheus_client" in __import__("sys").modules:
        raise RuntimeError("prepare_multiprocess_dir must run before prometheus_client is imported")
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[MULTIPROC_ENV] = str(path)


def registry() -> object:
    """The registry to expose: the multiprocess collector when enabled, else the default one."""
    from prometheus_client import REGISTRY, CollectorRegistry, multiprocess

    if os.environ.get(MULTIPROC_ENV):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
        return collected
    return REGISTRY


def render_latest() -> tuple[bytes, str]:
    """Body and content type of a /metrics answer."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(registry()), CONTENT_TYPE_LATEST  # type: ignore[arg-type]
