"""Scripted chat models and in-process test tools, for tests of graph logic only.

A `Script` answers each call by its purpose (plan, rewrite, arguments, answer) from a queue of replies
or a function; it records every call. The test tools are a real MCP server (the SDK's, in-process), so
the toolbox, its schemas and its errors are the real ones; only what the tools compute is made up.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from pydantic import ConfigDict, Field

from core.tenancy import acting_tenant
from routing.chat import structured_runnable

Reply = str | dict[str, Any] | AIMessage | Callable[[list[BaseMessage]], Any]


@dataclass(repr=False)  # LangChain puts a model's repr in every call's trace metadata: keep it short
class Script:
    replies: dict[str, list[Reply]] = field(default_factory=lambda: defaultdict(list))
    calls: list[tuple[str, str, list[BaseMessage]]] = field(default_factory=list)  # (tenant, purpose, messages)
    delays: dict[str, float] = field(default_factory=dict)  # purpose -> seconds each call takes

    def on(self, purpose: str, *replies: Reply) -> Script:
        self.replies[purpose].extend(replies)
        return self

    def answer(self, tenant: str, purpose: str, messages: list[BaseMessage]) -> AIMessage:
        self.calls.append((tenant, purpose, messages))
        queue = self.replies.get(purpose) or []
        reply: Any = queue.pop(0) if len(queue) > 1 else (queue[0] if queue else _default(purpose))
        if callable(reply):
            reply = reply(messages)
        if isinstance(reply, AIMessage):
            return reply
        text = json.dumps(reply) if isinstance(reply, dict) else str(reply)
        return AIMessage(text, usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15})

    def purposes(self) -> list[str]:
        return [p for _, p, _ in self.calls]


def _default(purpose: str) -> Any:
    if purpose == "rewrite":
        return {"queries": []}
    if purpose == "answer":
        return "The answer is in the sources [1]."
    return "{}"


class ScriptedChatModel(BaseChatModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    script: Script = Field(repr=False)
    tenant: str
    purpose: str
    stream_words: bool = Field(default=True)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        return structured_runnable(self, schema, include_raw)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return ChatResult(generations=[ChatGeneration(message=self.script.answer(self.tenant, self.purpose, messages))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.script.delays.get(self.purpose):
            await asyncio.sleep(self.script.delays[self.purpose])
        return self._generate(messages)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        reply = (await self._agenerate(messages)).generations[0].message
        words = reply.text.split(" ") if self.stream_words else [reply.text]
        for i, word in enumerate(words):
            yield ChatGenerationChunk(message=AIMessageChunk(content=word if i == 0 else " " + word))
        yield ChatGenerationChunk(message=AIMessageChunk(content="", usage_metadata=reply.usage_metadata))


def scripted_factory(script: Script) -> Callable[[str, str, int], BaseChatModel]:
    # Models are reused as the production factory reuses them (agents/deps.py): the script holds the state.
    @functools.cache
    def make(tenant: str, purpose: str, max_tokens: int) -> BaseChatModel:
        return ScriptedChatModel(script=script, tenant=tenant, purpose=purpose)

    return make


@dataclass
class ToolLog:
    """What the test tools were called with, and for which tenant (the acting tenant they saw)."""

    calls: list[tuple[str, str | None, dict[str, Any]]] = field(default_factory=list)
    fail_next: int = 0
    hits: list[dict[str, Any]] = field(default_factory=list)

    def count(self, tool: str) -> int:
        return sum(1 for name, _, _ in self.calls if name == tool)


def test_tools(log: ToolLog) -> MCPServer:
    """search_documents (canned hits), add, flaky (fails while fail_next > 0), slow_add, send_email.

    Asynchronous, as Orchestrion's own tools are (mcp_servers/): the SDK runs a synchronous tool in a worker
    thread, a hop per call that the real search does not make."""
    server = MCPServer(name="testtools")

    @server.tool(description="Search the caller's documents.")
    async def search_documents(query: str, k: int = 5, filters: dict[str, Any] | None = None) -> dict[str, Any]:
        log.calls.append(("search_documents", acting_tenant(), {"query": query, "k": k, "filters": filters}))
        return {"hits": [dict(h) for h in log.hits[:k]]}

    @server.tool(description="Add two integers.")
    async def add(a: int, b: int) -> dict[str, int]:
        log.calls.append(("add", acting_tenant(), {"a": a, "b": b}))
        return {"sum": a + b}

    @server.tool(description="Fails while the test says so.")
    async def flaky(x: int) -> dict[str, int]:
        log.calls.append(("flaky", acting_tenant(), {"x": x}))
        if log.fail_next > 0:
            log.fail_next -= 1
            raise ToolError("flaky failed on purpose")
        return {"x": x}

    @server.tool(description="Add two integers, slowly.")
    async def slow_add(a: int, b: int, seconds: float = 0.3) -> dict[str, Any]:
        log.calls.append(("slow_add", acting_tenant(), {"a": a, "b": b, "t": time.monotonic()}))
        await asyncio.sleep(seconds)
        log.calls.append(("slow_add_done", acting_tenant(), {"t": time.monotonic()}))
        return {"sum": a + b}

    @server.tool(description="Send an email (needs approval).")
    async def send_email(to: str, body: str) -> dict[str, str]:
        log.calls.append(("send_email", acting_tenant(), {"to": to, "body": body}))
        return {"sent": to}

    return server


def hit(doc_id: str, chunk: int, score: float, text: str, title: str = "") -> dict[str, Any]:
    return {
        "doc_id": doc_id,
        "chunk_index": chunk,
        "score": score,
        "text": text,
        "title": title or doc_id,
        "heading_path": [title or doc_id, "Section"],
        "source": f"{doc_id}.md",
    }
