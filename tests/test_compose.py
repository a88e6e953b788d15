"""compose.yaml parses with the real Docker Compose (no engine needed to parse)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE_VERSION = "v2.40.3"
COMPOSE_MODULE = "github.com/docker/compose/v2"


def _compose_works(env: dict[str, str]) -> bool:
    try:
        return (
            subprocess.run(["docker", "compose", "version"], env=env, capture_output=True, timeout=60).returncode == 0
        )
    except FileNotFoundError:
        return False


def compose_environment() -> dict[str, str]:
    """An environment in which `docker compose` works: the installed plugin, or one built once from
    the Go module proxy and cached (the module's go.mod forbids `go install`, so it is built in place)."""
    assert shutil.which("docker"), "the docker client is needed to parse compose.yaml"
    env = dict(os.environ)
    if _compose_works(env):
        return env
    config_dir = Settings().cache_dir / "docker"
    plugin = config_dir / "cli-plugins" / "docker-compose"
    if not plugin.is_file():
        info = subprocess.run(
            ["go", "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
            capture_output=True,
            text=True,
            check=True,
            timeout=900,
        )
        source = Path(json.loads(info.stdout)["Dir"])
        build_dir = config_dir / "src"
        shutil.rmtree(build_dir, ignore_errors=True)
        shutil.copytree(source, build_dir)
        for path in [build_dir, *build_dir.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        plugin.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "build", "-o", str(plugin), "./cmd"],
            cwd=build_dir,
            check=True,
            timeout=1800,
            env={**env, "CGO_ENABLED": "0"},
        )
        shutil.rmtree(build_dir)
    env["DOCKER_CONFIG"] = str(config_dir)
    assert _compose_works(env), f"docker compose does not run with the plugin built at {plugin}"
    return env


@pytest.fixture(scope="module")
def compose_env() -> dict[str, str]:
    return compose_environment()


def copy_compose_project(dest: Path) -> Path:
    """compose.yaml and the deploy/ files it mounts, copied where a test may add a .env."""
    shutil.copy(REPO / "compose.yaml", dest)
    shutil.copytree(REPO / "deploy", dest / "deploy")
    return dest


@pytest.fixture
def compose_dir(tmp_path: Path) -> Path:
    return copy_compose_project(tmp_path)


def test_compose_file_is_valid_with_the_example_env(compose_env: dict[str, str], compose_dir: Path) -> None:
    shutil.copy(REPO / ".env.example", compose_dir / ".env")
    for profile in ([], ["--profile", "local-llm"]):
        result = subprocess.run(
            ["docker", "compose", *profile, "config", "-q"],
            cwd=compose_dir,
            env=compose_env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr


def test_compose_refuses_to_start_without_secrets(compose_env: dict[str, str], compose_dir: Path) -> None:
    result = subprocess.run(
        ["docker", "compose", "config", "-q"],
        cwd=compose_dir,
        env=compose_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "in .env" in result.stderr  # names the variable and where to set it


def resolved_services(compose_env: dict[str, str], compose_dir: Path, **overrides: str) -> dict[str, Any]:
    """Every service as compose resolves it with the example .env; `overrides` are set as a shell would."""
    shutil.copy(REPO / ".env.example", compose_dir / ".env")
    result = subprocess.run(
        ["docker", "compose", "--profile", "local-llm", "config", "--format", "json"],
        cwd=compose_dir,
        env={**compose_env, **overrides},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    services: dict[str, Any] = json.loads(result.stdout)["services"]
    return services


def test_every_image_is_pinned_and_every_service_has_a_healthcheck(
    compose_env: dict[str, str], compose_dir: Path
) -> None:
    services = resolved_services(compose_env, compose_dir)
    for name, service in services.items():
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned"
        if service.get("restart") != "no":
            assert "healthcheck" in service, f"{name} has no healthcheck"
    assert "scale" not in services["worker"] and "container_name" not in services["worker"]


def test_every_orchestrion_variable_in_compose_names_a_setting(compose_env: dict[str, str], compose_dir: Path) -> None:
    """A misspelt variable is silently ignored: ORCHESTRION_DATABASE_URL left compose's checkpoints in SQLite."""
    services = resolved_services(compose_env, compose_dir)
    names = {
        name
        for service in services.values()
        for name in (service.get("environment") or {})
        if name.startswith("ORCHESTRION_")
    }
    assert "ORCHESTRION_AGENTS__CHECKPOINT_URL" in names
    unknown = []
    for name in sorted(names):
        model: Any = Settings
        for part in name.removeprefix("ORCHESTRION_").lower().split("__"):
            field = model.model_fields.get(part)
            if field is None:
                unknown.append(name)
                break
            model = field.annotation
    assert not unknown, f"compose sets variables no setting reads: {unknown}"


def test_ports_without_a_login_stay_on_localhost_whatever_publish_host_says(
    compose_env: dict[str, str], compose_dir: Path
) -> None:
    """PUBLISH_HOST=0.0.0.0 opens the services that ask for a login, and only those."""
    services = resolved_services(compose_env, compose_dir, PUBLISH_HOST="0.0.0.0")
    bound = {(name, port["target"]): port["host_ip"] for name, s in services.items() for port in s.get("ports", [])}
    # Prometheus's UI and API, Weaviate's admin ports and the MinIO console answer anyone who reaches them.
    localhost_only = {("prometheus", 9090), ("weaviate", 8080), ("weaviate", 50051), ("minio", 9001)}
    assert localhost_only <= bound.keys()
    for key, host_ip in bound.items():
        assert host_ip == ("127.0.0.1" if key in localhost_only else "0.0.0.0"), f"{key} binds to {host_ip}"
