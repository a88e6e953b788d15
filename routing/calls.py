"""One provider call: the chat model for a deployment, what the caller asked in the form that deployment takes,
and the classification of its failures.

Deployments differ in what they can do (`Deployment.tool_calling`, `Deployment.structured_output`): a request
with tools or an output schema is shaped here for the deployment that answers it, so callers (the agents)
use one interface whichever deployment the balancer picks.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.runnables import Runnable
from pydantic import SecretStr

from core.errors import ConfigurationError, InvalidInputError
from routing.fleet import Deployment

OnChunk = Callable[[AIMessageChunk], Awaitable[None]]

# The request itself is what the provider refused (too long for the context, a bad parameter): any
# deployment would refuse it too, so it is neither retried nor held against the deployment.
REQUEST_REFUSED = {400, 413, 422}


@dataclass(frozen=True)
class OutputSchema:
    """A JSON object the answer must be: its name (a tool name, for tool-calling deployments) and JSON schema."""

    name: str
    schema: dict[str, Any]
    description: str = ""


@dataclass(frozen=True)
class Ask:
    """What the caller asked, as every attempt sends it."""

    chat: list[BaseMessage]
    max_tokens: int
    temperature: float
    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function-tool schemas
    tool_choice: str | None = None  # a tool's name, "required", "auto" or None
    schema: OutputSchema | None = None
    on_chunk: OnChunk | None = None
    stop: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class Failure:
    retryable: bool  # worth the same deployment again (after a backoff)
    retry_after_s: float | None
    reason: str
    request_refused: bool = False  # the caller's request is at fault: stop, and count nothing against anyone


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, openai.RateLimitError):
        header = exc.response.headers.get("retry-after") if exc.response is not None else None
        return Failure(True, float(header) if header and header.replace(".", "", 1).isdigit() else None, "429")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in REQUEST_REFUSED:  # the provider's own words: they say what to change
            body = exc.body if isinstance(exc.body, dict) else {}
            said = str(body.get("message") or exc.message)[:300]
            return Failure(False, None, f"HTTP {exc.status_code}: {said}", request_refused=True)
        return Failure(exc.status_code >= 500, None, f"HTTP {exc.status_code}")
    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
        return Failure(True, None, "timeout")
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | ConnectionError):
        return Failure(True, None, "connection failed")
    return Failure(False, None, type(exc).__name__)


def output_limit(d: Deployment, max_tokens: int) -> dict[str, Any]:
    """The output limit in the parameter the server reads (llama.cpp ignores max_completion_tokens)."""
    return {"max_tokens": max_tokens} if d.max_tokens_param == "max_tokens" else {"max_completion_tokens": max_tokens}


def chat_model(
    d: Deployment, max_tokens: int, temperature: float, http: httpx.AsyncClient, key: str = ""
) -> BaseChatModel:
    """`key`: the deployment's API key (ModelClient resolves its `api_key_env`)."""
    if d.provider == "openai":
        from langchain_openai import ChatOpenAI

        # The limit goes in the request body itself, where `bind(extra_body=...)` of a structured call keeps it.
        return ChatOpenAI(
            model=d.model,
            base_url=d.base_url,
            api_key=SecretStr(key or "none"),
            timeout=d.timeout_s,
            max_retries=0,
            temperature=temperature,
            stream_usage=True,
            http_async_client=http,
            extra_body=output_limit(d, max_tokens),
        )
    try:
        from langchain.chat_models import init_chat_model  # anthropic / ollama: their LangChain packages
    except ImportError as exc:
        raise ConfigurationError(
            f"deployment {d.name}: provider {d.provider} needs `langchain` and `langchain-{d.provider}` installed"
        ) from exc

    kwargs: dict[str, Any] = {"temperature": temperature, "max_tokens": max_tokens, "timeout": d.timeout_s}
    if d.base_url:
        kwargs["base_url"] = d.base_url
    if key:
        kwargs["api_key"] = key
    model: BaseChatModel = init_chat_model(d.model, model_provider=d.provider, **kwargs)
    return model


@dataclass(frozen=True)
class Prepared:
    """The runnable to stream from, the messages to send it, and how to read its answer."""

    runnable: Runnable[Any, Any]
    messages: list[BaseMessage]
    finish: Callable[[AIMessage], AIMessage]
    # False where the answer is rewritten once complete (a forced tool call read as JSON content, tool calls read
    # from JSON): the caller is sent the finished message as one chunk, never pieces of another shape.
    streams: bool = True


def prepare(model: BaseChatModel, d: Deployment, ask: Ask) -> Prepared:
    """Shape tools and output schemas for what deployment `d` supports."""
    if ask.schema is not None:
        return _structured(model, d, ask)
    if ask.tools and not d.tool_calling:
        return _emulated_tools(model, d, ask)
    messages = ask.chat if d.tool_calling else plain_history(ask.chat)
    if ask.tools:
        return Prepared(model.bind_tools(list(ask.tools), tool_choice=ask.tool_choice), messages, _same)
    return Prepared(model, messages, _same)


def _same(message: AIMessage) -> AIMessage:
    return message


def _structured(model: BaseChatModel, d: Deployment, ask: Ask) -> Prepared:
    schema = ask.schema
    assert schema is not None
    messages = ask.chat if d.tool_calling else plain_history(ask.chat)
    if d.structured_output == "tool_calling" and d.tool_calling:
        tool = {
            "type": "function",
            "function": {"name": schema.name, "description": schema.description, "parameters": schema.schema},
        }
        return Prepared(model.bind_tools([tool], tool_choice=schema.name), messages, _tool_args_as_content, False)
    instruction = SystemMessage(
        f"Answer with one JSON object only, no prose, matching this JSON schema:\n{json.dumps(schema.schema)}"
    )
    # Every form goes in the request body: given as `response_format`, LangChain streams through the OpenAI SDK's
    # parsing helper, which knows neither llama.cpp's form nor a schema that is not a pydantic model. llama.cpp
    # (and Anyscale-style servers) constrain generation to the schema with a grammar; plain JSON mode only
    # promises JSON, so the schema is in the instruction as well.
    fmt: dict[str, Any]
    if d.structured_output == "json_schema":  # OpenAI's structured outputs
        fmt = {"type": "json_schema", "json_schema": {"name": schema.name, "schema": schema.schema, "strict": False}}
    else:
        fmt = {
            "type": "json_object",
            **({"schema": schema.schema} if d.structured_output == "json_object_schema" else {}),
        }
    if d.provider != "openai":
        return Prepared(model, [*messages, instruction], _same)
    body = {**output_limit(d, ask.max_tokens), "response_format": fmt}
    return Prepared(model.bind(extra_body=body), [*messages, instruction], _same)


def _tool_args_as_content(message: AIMessage) -> AIMessage:
    """A structured answer given as the arguments of a forced tool call becomes the message's JSON content."""
    if message.tool_calls:
        return AIMessage(
            content=json.dumps(message.tool_calls[0]["args"]),
            usage_metadata=message.usage_metadata,
            response_metadata=message.response_metadata,
        )
    return message


def _emulated_tools(model: BaseChatModel, d: Deployment, ask: Ask) -> Prepared:
    """A deployment without native tool calling is asked for its calls as JSON (grammar-constrained where the
    server can), and the answer is read back into `tool_calls`: the caller sees one interface."""
    names = [t["function"]["name"] for t in ask.tools]
    described = "\n".join(
        f"- {t['function']['name']}: {t['function'].get('description', '')} "
        f"arguments schema: {json.dumps(t['function'].get('parameters', {}))}"
        for t in ask.tools
    )
    required = ask.tool_choice not in (None, "auto", "none")
    call = {
        "type": "object",
        "properties": {"name": {"enum": names}, "arguments": {"type": "object"}},
        "required": ["name", "arguments"],
    }
    schema = {
        "type": "object",
        "properties": {
            "content": {"type": "string"},
            "tool_calls": {"type": "array", "items": call, **({"minItems": 1} if required else {})},
        },
        "required": ["tool_calls"],
    }
    instruction = (
        f"You can call these tools:\n{described}\nTo call tools, put them in `tool_calls`; to answer without "
        "tools, leave `tool_calls` empty and write the answer in `content`."
    )
    emulated = Ask(
        [*plain_history(ask.chat), SystemMessage(instruction)],
        ask.max_tokens,
        ask.temperature,
        schema=OutputSchema("tool_calls", schema),
        on_chunk=ask.on_chunk,
    )
    inner = _structured(model, d, emulated)
    return Prepared(inner.runnable, inner.messages, lambda m: _read_emulated_calls(m, set(names)), False)


def _read_emulated_calls(message: AIMessage, names: set[str]) -> AIMessage:
    text = message.content if isinstance(message.content, str) else ""
    try:
        data = json.loads(text)
    except ValueError:
        return message  # not JSON: an answer in prose
    if not isinstance(data, dict):
        return message
    calls = [
        {
            "name": c["name"],
            "args": c.get("arguments") or {},
            "id": f"call_{uuid.uuid4().hex[:12]}",
            "type": "tool_call",
        }
        for c in data.get("tool_calls") or []
        if isinstance(c, dict) and c.get("name") in names and isinstance(c.get("arguments") or {}, dict)
    ]
    content = data.get("content") if isinstance(data.get("content"), str) else ""
    return AIMessage(
        content=content or "",
        tool_calls=calls,
        usage_metadata=message.usage_metadata,
        response_metadata=message.response_metadata,
    )


def plain_history(chat: Sequence[BaseMessage]) -> list[BaseMessage]:
    """Tool calls and tool results as plain text, for servers whose chat template has no tool roles."""
    out: list[BaseMessage] = []
    for m in chat:
        if isinstance(m, ToolMessage):
            out.append(HumanMessage(f"[result of tool call {m.tool_call_id}]\n{m.text}"))
        elif isinstance(m, AIMessage) and m.tool_calls:
            calls = "; ".join(f"{c['name']}({json.dumps(c['args'])}) id={c.get('id')}" for c in m.tool_calls)
            out.append(AIMessage(content=f"{m.text}\n[called tools: {calls}]".strip()))
        else:
            out.append(m)
    return out


def to_messages(messages: list[dict[str, str]]) -> list[BaseMessage]:
    """Plain role/content messages (the MCP `complete` tool's) as LangChain messages."""
    out: list[BaseMessage] = []
    for m in messages:
        role, content = m.get("role"), m.get("content", "")
        if role == "system":
            out.append(SystemMessage(content))
        elif role == "user":
            out.append(HumanMessage(content))
        elif role == "assistant":
            out.append(AIMessage(content=content))
        else:
            raise InvalidInputError(f"unknown message role {role!r}: use system, user or assistant")
    if not out or isinstance(out[-1], SystemMessage):
        raise InvalidInputError("give at least one user or assistant message after any system messages")
    return out


def whole_chunk(message: AIMessage) -> AIMessageChunk:
    """A finished message as a single chunk (a cached answer, a rewritten one)."""
    pieces = [
        {"name": c["name"], "args": json.dumps(c["args"]), "id": c.get("id"), "index": i, "type": "tool_call_chunk"}
        for i, c in enumerate(message.tool_calls)
    ]
    return AIMessageChunk(content=message.content, tool_call_chunks=pieces)  # type: ignore[arg-type]
