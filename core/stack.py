"""Where the services are: settings URLs first, else the stack `orchestrion up` records.

`orchestrion up` writes ``<data_dir>/stack.json`` once every service is healthy, so
any other process (a worker, the stdio MCP server Claude Desktop starts, the CLI)
finds the same stack without being told its ports.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import StackNotRunningError
from core.settings import Settings

STACK_FILE = "stack.json"


@dataclass(frozen=True)
class StackRecord:
    launcher_pid: int
    data_dir: str
    urls: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)

    def write(self, data_dir: Path) -> None:
        path = data_dir / STACK_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)  # atomic: readers never see half a file

    @classmethod
    def read(cls, data_dir: Path) -> StackRecord | None:
        """The record of a live stack for this data dir, or None."""
        try:
            raw = json.loads((data_dir / STACK_FILE).read_text())
            record = cls(**raw)
        except (OSError, ValueError, TypeError):
            return None
        return record if pid_alive(record.launcher_pid) else None

    @staticmethod
    def remove(data_dir: Path) -> None:
        (data_dir / STACK_FILE).unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Endpoints:
    """Resolved service addresses; asking for one that nothing provides names the fix."""

    data_dir: Path
    found: dict[str, str]

    def get(self, name: str) -> str:
        if name in self.found:
            return self.found[name]
        raise StackNotRunningError(
            f"no {name.replace('_', ' ')} is configured and no Orchestrion stack is running for data dir "
            f"{self.data_dir}: start one with `orchestrion up` (same ORCHESTRION_DATA_DIR) or set {_HINTS[name]}"
        )

    @property
    def redis_url(self) -> str:
        return self.get("redis_url")

    @property
    def weaviate_url(self) -> str:
        return self.get("weaviate_url")

    @property
    def llm_base_url(self) -> str:
        return self.get("llm_base_url")

    @property
    def api_url(self) -> str:
        return self.get("api_url")


_HINTS = {
    "redis_url": "REDIS_URL",
    "weaviate_url": "WEAVIATE_URL",
    "weaviate_grpc": "ORCHESTRION_WEAVIATE__GRPC_URL",
    "llm_base_url": "OPENAI_BASE_URL or ORCHESTRION_MODELS__LOCAL_LLM_URL",
    "llm_base_urls": "ORCHESTRION_MODELS__LOCAL_LLM_URLS",
    "api_url": "nothing: the API server runs with `orchestrion up` or `orchestrion serve`",
    "mcp_url": "nothing: the MCP endpoint runs with `orchestrion up` or `orchestrion serve`",
}


def resolve_endpoints(settings: Settings) -> Endpoints:
    record = StackRecord.read(settings.data_dir)
    found = dict(record.urls) if record else {}
    configured = {
        "redis_url": settings.redis.url,
        "weaviate_url": settings.weaviate.url,
        "weaviate_grpc": settings.weaviate.grpc_url,
        "llm_base_url": settings.models.local_llm_url,
        "llm_base_urls": settings.models.local_llm_urls,
    }
    found.update({k: v for k, v in configured.items() if v})
    return Endpoints(data_dir=settings.data_dir, found=found)
