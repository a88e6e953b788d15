"""Ask the agents from the terminal: the running stack's MCP endpoint, with the local token `up` keeps."""

from __future__ import annotations

from typing import Any

import anyio
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from core.errors import OrchestrionError, StackNotRunningError
from core.settings import Settings
from core.stack import StackRecord


def local_endpoint(settings: Settings) -> tuple[str, str]:
    """The running stack's MCP URL and the default tenant's local token."""
    record = StackRecord.read(settings.data_dir)
    token_file = settings.data_dir / "local-token"
    if record is None or "mcp_url" not in record.urls or not token_file.is_file():
        raise StackNotRunningError(
            f"no Orchestrion stack is running for data dir {settings.data_dir}: start one with `orchestrion up`"
        )
    return record.urls["mcp_url"], token_file.read_text().strip()


def ask(url: str, token: str, question: str, thread_id: str | None, console: Console) -> dict[str, Any]:
    """`ask` over MCP with a live status line of the run's progress; the structured result."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    async def run() -> dict[str, Any]:
        http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
        with console.status("asking…") as status:

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                status.update(escape(message or "working…"))

            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                arguments: dict[str, Any] = {"question": question}
                if thread_id:
                    arguments["thread_id"] = thread_id
                result = await client.call_tool("ask", arguments, progress_callback=on_progress)
        if result.is_error or result.structured_content is None:
            text = " ".join(getattr(b, "text", "") for b in result.content)
            raise OrchestrionError(text or "the agents did not answer")
        return dict(result.structured_content)

    return anyio.run(run)


def print_answer(result: dict[str, Any], console: Console) -> None:
    if result.get("status") == "interrupted":
        for pending in result.get("interrupts") or []:
            value = pending.get("value") or {}
            console.print(
                f"[yellow]waiting for approval[/yellow]: {escape(str(value.get('tool')))} "
                f"{escape(str(value.get('arguments')))}"
            )
        console.print(f"approve or reject with the MCP tool `approve` (run {result['run_id']})")
        return
    if result.get("status") == "error":
        raise OrchestrionError(result.get("error") or "the run failed")
    console.print(escape(result.get("answer") or f"(no answer: {result.get('stop_reason')})"), soft_wrap=True)
    if result.get("citations"):
        table = Table(show_header=True, title_justify="left")
        for column in ("#", "source", "document", "chunk", "score"):
            table.add_column(column)
        for c in result["citations"]:
            score = f"{c['score']:.3f}" if c.get("score") is not None else ""
            table.add_row(
                str(c["n"]),
                escape(c["label"]),
                escape(str(c.get("doc_id") or c.get("source"))),
                str(c.get("chunk_index") if c.get("chunk_index") is not None else ""),
                score,
            )
        console.print(table)
    console.print(
        f"[dim]plan: {result.get('plan_source')} · thread {result['thread_id']} · run {result['run_id']}"
        f" · trace {result.get('trace_id')}[/dim]",
        soft_wrap=True,  # ids on one line, whatever the terminal's width
    )
