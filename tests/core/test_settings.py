from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings, describe_validation_error, get_settings, settings_override


def test_standard_variable_names_fill_the_nested_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache:6380/2")
    monkeypatch.setenv("WEAVIATE_URL", "http://vectors:8080")
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-lf-1")
    monkeypatch.setenv("LANGFUSE_BASE_URL", "http://langfuse:3000")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai")

    settings = Settings()

    assert settings.redis.url == "redis://cache:6380/2"
    assert settings.weaviate.url == "http://vectors:8080"
    assert settings.langfuse.enabled
    assert settings.langfuse.base_url == "http://langfuse:3000"
    assert settings.models.openai_api_key is not None
    assert settings.models.openai_api_key.get_secret_value() == "sk-openai"
    assert "sk-openai" not in settings.model_dump_json()  # secrets never printed


def test_prefixed_name_wins_over_the_standard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://standard:6379/0")
    monkeypatch.setenv("ORCHESTRION_REDIS__URL", "redis://prefixed:6379/0")
    monkeypatch.setenv("ORCHESTRION_SERVER__PORT", "9001")

    settings = Settings()

    assert settings.redis.url == "redis://prefixed:6379/0"
    assert settings.server.port == 9001


def test_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://from-dotenv:6379/0\nORCHESTRION_CELERY__CONCURRENCY=7\n")
    monkeypatch.chdir(tmp_path)

    settings = Settings()

    assert settings.redis.url == "redis://from-dotenv:6379/0"
    assert settings.celery.concurrency == 7


def test_environment_beats_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("REDIS_URL=redis://from-dotenv:6379/0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/0")

    assert Settings().redis.url == "redis://from-env:6379/0"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("ORCHESTRION_SERVER__PORT", "99999", "ORCHESTRION_SERVER__PORT"),
        ("REDIS_URL", "http://not-redis", "REDIS_URL"),
        ("ORCHESTRION_CELERY__VISIBILITY_TIMEOUT_S", "10", "ORCHESTRION_CELERY"),
        ("ORCHESTRION_LOG_LEVEL", "LOUD", "ORCHESTRION_LOG_LEVEL"),
    ],
)
def test_invalid_setting_is_one_line_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_validation_error(caught.value)
    assert "\n" not in message
    assert named in message


def test_cli_fails_at_start_with_one_clear_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "ORCHESTRION_SERVER__PORT": "not-a-port"}
    result = subprocess.run(
        [sys.executable, "-m", "orchestrion", "config"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "ORCHESTRION_SERVER__PORT" in lines[0]
    assert "Traceback" not in result.stderr


def test_override_is_scoped_to_the_block(tmp_path: Path) -> None:
    with settings_override(data_dir=tmp_path / "a") as inner:
        assert get_settings() is inner
        assert get_settings().data_dir == tmp_path / "a"
    assert get_settings().data_dir != tmp_path / "a"


def test_data_dir_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert Settings().data_dir == tmp_path / ".local" / "share" / "orchestrion"
    monkeypatch.setenv("ORCHESTRION_DATA_DIR", str(tmp_path / "elsewhere"))
    assert Settings().data_dir == tmp_path / "elsewhere"
