"""A third-party-style stdio MCP server whose tools leave a mark: each call appends a line to EFFECTS_FILE.

Run as `python tests/graphs/effect_server.py`; the crash tests count the lines to prove each call took
effect once, whichever process (the run's, a resumed run's, a Celery worker) made it.
"""

from __future__ import annotations

import os
import time

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer(name="effects")


def _mark(line: str) -> None:
    with open(os.environ["EFFECTS_FILE"], "a") as f:
        f.write(line + "\n")


@server.tool(description="Record a label once, after working for `seconds` seconds.")
async def slow_effect(label: str, seconds: float = 0.0) -> dict[str, str]:
    _mark(f"start {label} {os.getpid()} {time.time():.3f}")
    await anyio.sleep(seconds)
    _mark(f"done {label} {os.getpid()} {time.time():.3f}")
    return {"recorded": label}


if __name__ == "__main__":
    anyio.run(server.run_stdio_async)
