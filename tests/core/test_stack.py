from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import StackNotRunningError
from core.settings import Settings
from core.stack import StackRecord, resolve_endpoints


def test_without_stack_or_url_the_error_says_how_to_start_one(tmp_path: Path) -> None:
    endpoints = resolve_endpoints(Settings(data_dir=tmp_path))
    with pytest.raises(StackNotRunningError, match="orchestrion up") as caught:
        endpoints.redis_url  # noqa: B018
    assert "REDIS_URL" in str(caught.value)
    assert str(tmp_path) in str(caught.value)


def test_configured_url_needs_no_stack(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, redis={"url": "redis://elsewhere:6379/0"})
    assert resolve_endpoints(settings).redis_url == "redis://elsewhere:6379/0"


def test_record_of_a_dead_launcher_is_ignored(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    StackRecord(dead.pid, str(tmp_path), {"redis_url": "redis://127.0.0.1:1/0"}).write(tmp_path)
    assert StackRecord.read(tmp_path) is None
    with pytest.raises(StackNotRunningError):
        resolve_endpoints(Settings(data_dir=tmp_path)).redis_url  # noqa: B018


def test_record_of_a_live_launcher_is_found(tmp_path: Path) -> None:
    import os

    StackRecord(os.getpid(), str(tmp_path), {"redis_url": "redis://127.0.0.1:7777/0"}).write(tmp_path)
    assert resolve_endpoints(Settings(data_dir=tmp_path)).redis_url == "redis://127.0.0.1:7777/0"
