"""Start a worker: the Celery adapter's process entry, with its Prometheus exporter."""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.errors import ServiceStartError
from core.settings import Settings
from core.stack import resolve_endpoints
from observability.metrics import prepare_multiprocess_dir

if TYPE_CHECKING:
    from workers.host import HostOpener


log = logging.getLogger(__name__)


def default_hostname() -> str:
    return f"orchestrion@{socket.gethostname()}"


def run_worker(
    settings: Settings, queues: Sequence[str], concurrency: int, hostname: str, open_host: HostOpener
) -> None:
    """`open_host`: the composition root each pool process opens its Host with (after the fork)."""
    # Before anything imports prometheus_client: the pool's children report through files here.
    prepare_multiprocess_dir(settings.data_dir / "metrics" / hostname.replace("@", "_"))
    from prometheus_client import start_http_server

    from observability.instruments import QueueDepthCollector
    from observability.metrics import registry
    from workers.app import create_celery_app, queue_depth
    from workers.instrumentation import instrument_worker
    from workers.process import use_opener

    # Celery's Redis result backend calls a method redis-py 8 deprecates, once per task.
    warnings.filterwarnings("ignore", message="Call to deprecated setex", category=DeprecationWarning)
    unknown = sorted(set(queues) - set(settings.celery.queues))
    if unknown:
        raise ServiceStartError(
            f"unknown queue(s) {', '.join(unknown)}: choose from {', '.join(settings.celery.queues)}"
        )
    app = create_celery_app(settings, resolve_endpoints(settings).redis_url)
    use_opener(open_host)
    instrument_worker(app, settings)
    metrics = registry()
    metrics.register(QueueDepthCollector(settings.celery.queues, lambda q: queue_depth(app, q)))  # type: ignore[attr-defined]
    port = settings.celery.metrics_port
    try:
        start_http_server(port, addr=settings.server.host, registry=metrics)  # type: ignore[arg-type]
    except OSError as exc:
        raise ServiceStartError(
            f"worker metrics port {port} is in use ({exc.strerror}): set ORCHESTRION_CELERY__METRICS_PORT "
            "to another port, or 0 for a free one"
        ) from exc
    log.info("worker %s consuming %s; metrics on :%s/metrics", hostname, ",".join(queues), port)
    app.worker_main(
        [
            "worker",
            "--queues",
            ",".join(queues),
            "--concurrency",
            str(concurrency),
            "--hostname",
            hostname,
            "--loglevel",
            settings.log_level,
            "--without-mingle",
            "--without-gossip",
        ]
    )
