"""The model client as a LangChain chat model: agents call it like any chat model.

`RoutedChatModel` is bound to one tenant (and optionally a purpose or a tier hint); each call
goes through `ModelClient.generate`, so the router, the balancer, retries, fallback, the cache,
budgets, accounting and tracing all apply. Tools (`bind_tools`), tool messages, structured
output (`with_structured_output`, shaped per deployment) and token streaming (`astream`, and
LangGraph's `messages` stream mode through the callbacks) work as LangChain defines them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, cast

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, ConfigDict, ValidationError

from routing.calls import OutputSchema
from routing.client import Completion, ModelClient


class RoutedChatModel(BaseChatModel):
    """A chat model whose every call is routed for `tenant` (never taken from the messages)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    client: ModelClient
    tenant: str
    # LangChain's global cache would key answers without the tenant; the router's own cache is per tenant.
    cache: bool | None = False
    purpose: str | None = None
    hint: str | None = None
    max_tokens: int = 512
    temperature: float = 0.0
    bypass_cache: bool = False

    @property
    def _llm_type(self) -> str:
        return "orchestrion-routed"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "purpose": self.purpose,
            "hint": self.hint,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
        }

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice == "any":
            tool_choice = "required"
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)

    def with_structured_output(
        self, schema: dict[str, Any] | type, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """JSON matching `schema` (a pydantic model or a JSON schema), however the deployment that answers
        produces it (`Deployment.structured_output`). A reply that does not validate raises
        OutputParserException naming what is wrong, so a caller can retry with the error."""
        kwargs.pop("method", None)
        kwargs.pop("strict", None)
        if kwargs:
            raise ValueError(f"unsupported arguments {sorted(kwargs)}")
        return structured_runnable(self, schema, include_raw)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The client is asynchronous (Redis leases, streamed HTTP); a synchronous caller gets a loop of its own.
        completion = asyncio.run(self._complete(messages, None, kwargs))
        return _result(completion)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # LangChain calls this only when no handler streams (otherwise `_astream`): nothing reads tokens here, so
        # none are sent, and a failure after the first one may still be retried elsewhere.
        return _result(await self._complete(messages, None, kwargs))

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        """Chunks as the deployment streams them, then one last empty chunk with the usage and routing metadata
        (the base class reports each chunk to the callbacks, which is how LangGraph streams tokens)."""
        queue: asyncio.Queue[AIMessageChunk | None] = asyncio.Queue()

        async def on_chunk(chunk: AIMessageChunk) -> None:
            await queue.put(chunk)

        async def produce() -> Completion:
            try:
                return await self._complete(messages, on_chunk, kwargs)
            finally:
                await queue.put(None)

        task = asyncio.create_task(produce())
        try:
            while (chunk := await queue.get()) is not None:
                yield ChatGenerationChunk(message=chunk)
            completion = await task
        finally:
            if not task.done():
                task.cancel()
        final = completion.message
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="", usage_metadata=final.usage_metadata, response_metadata=_metadata(completion)
            )
        )

    async def _complete(self, messages: list[BaseMessage], on_chunk: Any, kwargs: dict[str, Any]) -> Completion:
        return await self.client.generate(
            self.tenant,
            messages,
            hint=self.hint,
            purpose=self.purpose,
            tools=kwargs.get("tools") or (),
            tool_choice=kwargs.get("tool_choice"),
            schema=kwargs.get("output_schema"),
            max_tokens=kwargs.get("max_tokens", self.max_tokens),
            temperature=kwargs.get("temperature", self.temperature),
            bypass_cache=self.bypass_cache,
            on_chunk=on_chunk,
        )


def structured_runnable(
    model: BaseChatModel, schema: dict[str, Any] | type, include_raw: bool
) -> Runnable[LanguageModelInput, Any]:
    """`model` bound to an output schema (its `_agenerate` receives `output_schema`), then the reply parsed."""
    return _Structured(model.bind(output_schema=output_schema(schema)), schema, include_raw)


class _Structured(Runnable[LanguageModelInput, Any]):
    """The reply parsed in line, with include_raw as {"raw", "parsed", "parsing_error"} (a parse failure is
    reported, a model failure raised). Not LangChain's `RunnableMap | RunnableAssign.with_fallbacks` of lambdas:
    that sends each synchronous lambda through a thread-pool hop and opens a callback run per piece, several
    milliseconds of CPU per planner call, for a result that is the same."""

    def __init__(self, bound: Runnable[LanguageModelInput, Any], schema: dict[str, Any] | type, include_raw: bool):
        self.bound, self.schema, self.include_raw = bound, schema, include_raw

    def invoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._parsed(self.bound.invoke(input, config, **kwargs))

    async def ainvoke(self, input: LanguageModelInput, config: RunnableConfig | None = None, **kwargs: Any) -> Any:
        return self._parsed(await self.bound.ainvoke(input, config, **kwargs))

    def _parsed(self, raw: AIMessage) -> Any:
        if not self.include_raw:
            return parse_structured(raw, self.schema)
        try:
            parsed = parse_structured(raw, self.schema)
        except Exception as exc:  # noqa: BLE001 - the caller reads it from parsing_error, to retry with it
            return {"raw": raw, "parsed": None, "parsing_error": exc}
        return {"raw": raw, "parsed": parsed, "parsing_error": None}


def _metadata(completion: Completion) -> dict[str, Any]:
    return {
        **completion.message.response_metadata,
        "decision": completion.decision.explain(),
        "cost_usd": completion.cost_usd,
        "ttft_s": completion.ttft_s,
        "latency_s": completion.latency_s,
        "cached": completion.cached,
        "usage_estimated": completion.usage_estimated,
    }


def _result(completion: Completion) -> ChatResult:
    message = completion.message
    message.response_metadata = _metadata(completion)
    return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"deployment": completion.deployment})


def output_schema(schema: dict[str, Any] | type) -> OutputSchema:
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        return _model_schema(schema)
    if isinstance(schema, dict):
        if "function" in schema or "parameters" in schema:
            tool = convert_to_openai_tool(schema)["function"]
            return OutputSchema(tool["name"], tool.get("parameters", {}), tool.get("description", ""))
        name = re.sub(r"[^A-Za-z0-9_-]", "_", str(schema.get("title") or "output"))[:64] or "output"
        return OutputSchema(name, schema, str(schema.get("description", "")))
    raise TypeError(f"structured output takes a pydantic model or a JSON schema dict, not {schema!r}")


@functools.cache
def _model_schema(model: type[BaseModel]) -> OutputSchema:
    """Generating a model's JSON schema costs milliseconds; the agents ask for the same few on every run."""
    return OutputSchema(model.__name__, model.model_json_schema(), (model.__doc__ or "").strip())


def parse_structured(message: AIMessage, schema: dict[str, Any] | type) -> Any:
    """The answer's JSON, validated by `schema` when it is a pydantic model; errors say what was wrong."""
    text = message.text.strip()
    if text.startswith("```"):  # some models fence JSON even when asked not to
        text = text.strip("`").removeprefix("json").strip()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise OutputParserException(f"the answer is not JSON ({exc}): {text[:200]!r}", llm_output=text) from exc
    if isinstance(schema, type) and issubclass(schema, BaseModel):
        try:
            return schema.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(root)'}: {e['msg']}" for e in exc.errors())
            raise OutputParserException(
                f"the answer does not match {schema.__name__}: {problems}", llm_output=text
            ) from exc
    return cast(Any, data)
