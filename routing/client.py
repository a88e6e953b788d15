"""Model calls: route, pick a deployment, stream, retry, fail over, account, trace.

A retryable failure (timeout, connection error, 5xx, 429) is retried with jittered
exponential backoff, then the next deployment of the tier is tried, then the next
tier (if the fleet allows). A stream that already gave the caller tokens is never
silently retried: the caller would see text twice.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import openai
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, HumanMessage, SystemMessage
from langchain_core.messages.ai import add_usage
from langfuse import Langfuse
from pydantic import SecretStr

from core.errors import ConfigurationError, InvalidInputError, OrchestrionError
from routing.balancer import Balancer, Lease
from routing.fleet import Deployment, Fleet
from routing.ledger import Ledger, ResponseCache
from routing.router import Decision, Router

OnToken = Callable[[str], Awaitable[None]]


class ModelUnavailableError(OrchestrionError):
    """Every deployment that could answer failed or is cooling down."""


class BudgetExceededError(OrchestrionError):
    """The tenant has spent its budget and its policy refuses further calls."""


class PartialStreamError(OrchestrionError):
    """A stream broke after tokens reached the caller; it is not retried behind the caller's back."""


@dataclass
class Completion:
    text: str
    decision: Decision
    deployment: str
    model: str
    tokens_in: int
    tokens_out: int
    usage_estimated: bool
    cost_usd: float
    ttft_s: float | None
    latency_s: float
    cached: bool = False
    attempts: list[str] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        data = asdict(self)
        data["decision"] = self.decision.explain()
        return data


@dataclass(frozen=True)
class _Ask:
    """What the caller asked, as every attempt sends it."""

    chat: list[BaseMessage]
    max_tokens: int
    temperature: float
    on_token: OnToken | None


# Chat models kept per event loop, the most recently used (a model per deployment and parameters).
CHAT_MODELS_KEPT = 64
# The request itself is what the provider refused (too long for the context, a bad parameter): any
# deployment would refuse it too, so it is neither retried nor held against the deployment.
REQUEST_REFUSED = {400, 413, 422}


@dataclass(frozen=True)
class _Failure:
    retryable: bool  # worth the same deployment again (after a backoff)
    retry_after_s: float | None
    reason: str
    request_refused: bool = False  # the caller's request is at fault: stop, and count nothing against anyone


def classify(exc: BaseException) -> _Failure:
    if isinstance(exc, openai.RateLimitError):
        header = exc.response.headers.get("retry-after") if exc.response is not None else None
        return _Failure(True, float(header) if header and header.replace(".", "", 1).isdigit() else None, "429")
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in REQUEST_REFUSED:  # the provider's own words: they say what to change
            body = exc.body if isinstance(exc.body, dict) else {}
            said = str(body.get("message") or exc.message)[:300]
            return _Failure(False, None, f"HTTP {exc.status_code}: {said}", request_refused=True)
        return _Failure(exc.status_code >= 500, None, f"HTTP {exc.status_code}")
    if isinstance(exc, openai.APITimeoutError | asyncio.TimeoutError | TimeoutError):
        return _Failure(True, None, "timeout")
    if isinstance(exc, openai.APIConnectionError | httpx.TransportError | ConnectionError):
        return _Failure(True, None, "connection failed")
    return _Failure(False, None, type(exc).__name__)


def to_messages(messages: list[dict[str, str]]) -> list[BaseMessage]:
    out: list[BaseMessage] = []
    for m in messages:
        role, content = m.get("role"), m.get("content", "")
        if role == "system":
            out.append(SystemMessage(content))
        elif role == "user":
            out.append(HumanMessage(content))
        elif role == "assistant":
            out.append(AIMessageChunk(content=content))
        else:
            raise InvalidInputError(f"unknown message role {role!r}: use system, user or assistant")
    if not out or not isinstance(out[-1], HumanMessage):
        raise InvalidInputError("the last message must be the user's")
    return out


def chat_model(
    d: Deployment, max_tokens: int, temperature: float, http: httpx.AsyncClient, key: str = ""
) -> BaseChatModel:
    """`key`: the deployment's API key (ModelClient resolves its `api_key_env`)."""
    if d.provider == "openai":
        from langchain_openai import ChatOpenAI

        limit: dict[str, Any] = (
            {"extra_body": {"max_tokens": max_tokens}}
            if d.max_tokens_param == "max_tokens"
            else {"max_tokens": max_tokens}
        )
        return ChatOpenAI(model=d.model, base_url=d.base_url, api_key=SecretStr(key or "none"), timeout=d.timeout_s,
                          max_retries=0, temperature=temperature, stream_usage=True, http_async_client=http,
                          **limit)  # fmt: skip
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


class ModelClient:
    def __init__(
        self,
        fleet: Fleet,
        router: Router,
        balancer: Balancer,
        ledger: Ledger,
        cache: ResponseCache,
        langfuse: Langfuse | None = None,
        api_keys: Mapping[str, str] | None = None,
    ) -> None:
        """`api_keys`: key by variable name, as settings read them (from the environment or `.env`); the process
        environment is looked up for a variable they do not name."""
        self._api_keys = dict(api_keys or {})
        self.fleet = fleet
        self.router = router
        self.balancer = balancer
        self.ledger = ledger
        self.cache = cache
        self._langfuse = langfuse
        self._rng = random.Random()
        # One connection pool per event loop: an httpx client must not outlive the loop it
        # was made in (a Celery task runs each call in a loop of its own).
        self._http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._models: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, OrderedDict[tuple[str, int, float], BaseChatModel]
        ] = weakref.WeakKeyDictionary()

    def _chat_model(self, d: Deployment, max_tokens: int, temperature: float) -> BaseChatModel:
        """Chat models are reused per loop and parameters: building one costs milliseconds of CPU."""
        loop = asyncio.get_running_loop()
        models = self._models.setdefault(loop, OrderedDict())
        key = (d.name, max_tokens, temperature)
        if key in models:
            models.move_to_end(key)
        else:
            models[key] = chat_model(d, max_tokens, temperature, self._http_client(), self._api_key(d))
            if len(models) > CHAT_MODELS_KEPT:  # callers choose the parameters: keep the recent ones only
                models.popitem(last=False)
        return models[key]

    def _api_key(self, d: Deployment) -> str:
        if not d.api_key_env:
            return ""
        return self._api_keys.get(d.api_key_env) or os.environ.get(d.api_key_env, "")

    def _http_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if loop not in self._http:
            self._http[loop] = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=256))
        return self._http[loop]

    async def complete(
        self,
        tenant: str,
        messages: list[dict[str, str]],
        *,
        hint: str | None = None,
        needs_tools: bool = False,
        max_tokens: int = 256,
        temperature: float = 0.0,
        bypass_cache: bool = False,
        on_token: OnToken | None = None,
    ) -> Completion:
        chat = to_messages(messages)
        policy = self.fleet.policy_for(tenant)
        # Off the event loop: the classifier embeds the prompt, which can wait on the model process.
        decision = await asyncio.to_thread(
            self.router.decide, str(chat[-1].content), hint=hint, needs_tools=needs_tools, policy=policy
        )
        decision = await self._within_budget(tenant, decision)
        from observability.instruments import model_metrics

        metrics = model_metrics()
        metrics.decisions.labels(decision.tier, decision.stage).inc()
        params = {"max_tokens": max_tokens, "temperature": temperature}
        key = self.cache.key(tenant, [d.model for d in self.fleet.in_tier(decision.tier)], messages, params)
        hit = None if bypass_cache else await self.cache.get(key)
        metrics.cache.labels("bypass" if bypass_cache else "hit" if hit else "miss").inc()
        if hit is not None:
            completion = Completion(**{**hit, "decision": decision, "cached": True, "cost_usd": 0.0})
            if on_token is not None:
                await on_token(completion.text)
            return completion
        # A tier the tenant's policy chose (forced, capped, downgraded) is not left for a dearer one.
        highest = decision.tier if decision.stage == "policy" else policy.max_tier or self.fleet.tiers[-1]
        completion = await self._call(decision, _Ask(chat, max_tokens, temperature, on_token), highest)
        cost_tier = next(d for d in self.fleet.deployments if d.name == completion.deployment).tier
        await self.ledger.record(tenant, cost_tier, completion.tokens_in, completion.tokens_out, completion.cost_usd)
        stored = completion.public()
        stored.pop("decision")
        stored.pop("cached")
        await self.cache.put(key, stored)
        return completion

    async def _within_budget(self, tenant: str, decision: Decision) -> Decision:
        policy = self.fleet.policy_for(tenant)
        if policy.budget_usd is None:
            return decision
        spent = await self.ledger.spent(tenant)
        if spent < policy.budget_usd:
            return decision
        if policy.over_budget == "downgrade":
            cheapest = self.fleet.tiers[0]
            return Decision(cheapest, "policy", f"over budget (${spent:.4f} of ${policy.budget_usd}): downgraded")
        raise BudgetExceededError(f"tenant {tenant!r} has spent ${spent:.4f} of its ${policy.budget_usd} budget")

    async def _call(self, decision: Decision, ask: _Ask, highest: str) -> Completion:
        """Deployments of the decided tier, then (if the fleet falls back) of the tiers above it up to `highest`."""
        attempts: list[str] = []
        tiers = self.fleet.tiers
        start = tiers.index(decision.tier)
        order = tiers[start : tiers.index(highest) + 1] if self.fleet.fallback_to_next_tier else [decision.tier]
        for tier in order:
            tried: set[str] = set()
            while (lease := await self.balancer.pick(tier, self.fleet.in_tier(tier), tried)) is not None:
                deployment = next(d for d in self.fleet.deployments if d.name == lease.name)
                tried.add(deployment.name)
                for attempt in range(self.fleet.retries + 1):
                    if attempt:
                        await asyncio.sleep(self._backoff(attempt - 1))
                        if (lease := await self.balancer.again(deployment)) is None:
                            break  # its circuit opened meanwhile, from calls of other processes
                    outcome = await self._attempt(lease, deployment, decision, ask)
                    if isinstance(outcome, Completion):
                        outcome.decision, outcome.attempts = decision, attempts
                        if tier != decision.tier:
                            outcome.decision = Decision(tier, decision.stage, f"{decision.reason}; fell back to {tier}",
                                                        decision.score, decision.threshold)  # fmt: skip
                        return outcome
                    failure, opened = outcome
                    if failure.request_refused:
                        raise InvalidInputError(f"the model refused the request ({deployment.name}: {failure.reason})")
                    attempts.append(f"{deployment.name}: {failure.reason}")
                    if opened or not failure.retryable:
                        break
        if not any(self.fleet.in_tier(t) for t in order):
            raise ModelUnavailableError(f"no deployment serves tier {decision.tier!r}" + (
                " or a higher one" if len(order) > 1 else ""))  # fmt: skip
        raise ModelUnavailableError(
            "no model deployment could answer"
            + (f": {'; '.join(attempts)}" if attempts else ": every one is cooling down or at its max_concurrency")
        )

    async def _attempt(
        self, lease: Lease, d: Deployment, decision: Decision, ask: _Ask
    ) -> Completion | tuple[_Failure, bool]:
        """One call on a leased deployment; the lease goes back with the verdict in the same round trip.

        Returns the completion, or the failure and whether the deployment's circuit is now open."""
        state = self.balancer.state
        # Every verdict is shielded: a cancellation arriving while it is on its way to Redis would leave the
        # lease to expire (timeout + margin), counted as a stalled call that steers traffic away meanwhile.
        try:
            result = await self._traced(d, decision, ask)
        except PartialStreamError:
            await asyncio.shield(state.failed(lease))
            raise
        except Exception as exc:  # noqa: BLE001 - classified here; only deliberate errors escape
            failure = classify(exc)
            if failure.request_refused:
                await asyncio.shield(state.release(lease))
                return failure, False
            return failure, await asyncio.shield(state.failed(lease, failure.retry_after_s))
        except BaseException:
            # Cancelled: free the slot now, not when the lease expires (anyio delivers the cancellation
            # again at every await, hence the shield).
            await asyncio.shield(state.release(lease))
            raise
        await asyncio.shield(state.succeeded(lease, result.latency_s))
        return result

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.fleet.backoff_max_s, self.fleet.backoff_base_s * 2**attempt)
        return self._rng.uniform(0, ceiling)  # full jitter: retries of many callers spread out

    async def _traced(self, d: Deployment, decision: Decision, ask: _Ask) -> Completion:
        """One attempt as a Langfuse generation: model, usage, cost, TTFT, and the routing decision."""
        if self._langfuse is None:
            return await self._stream(d, ask)
        with self._langfuse.start_as_current_observation(
            as_type="generation",
            name=f"llm {d.tier}",
            model=d.model,
            input=[{"role": m.type, "content": m.content} for m in ask.chat],
            model_parameters={"max_tokens": ask.max_tokens, "temperature": ask.temperature},
            metadata={"deployment": d.name, "routing": decision.explain()},
        ) as generation:
            started = datetime.now(UTC)
            try:
                result = await self._stream(d, ask)
            except Exception as exc:
                generation.update(level="ERROR", status_message=f"{d.name}: {classify(exc).reason}")
                raise
            generation.update(
                output=result.text,
                usage_details={"input": result.tokens_in, "output": result.tokens_out},
                cost_details={"total": result.cost_usd},
                completion_start_time=started + timedelta(seconds=result.ttft_s) if result.ttft_s else None,
                metadata={
                    "deployment": d.name,
                    "routing": decision.explain(),
                    "usage_estimated": result.usage_estimated,
                },
            )
            return result

    async def _stream(self, d: Deployment, ask: _Ask) -> Completion:
        from observability.instruments import model_metrics

        metrics = model_metrics()
        model = self._chat_model(d, ask.max_tokens, ask.temperature)
        metrics.in_flight.labels(d.name).inc()
        started = time.perf_counter()
        ttft: float | None = None
        pieces: list[str] = []
        usage: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(d.timeout_s):
                async for chunk in model.astream(ask.chat):
                    if chunk.usage_metadata:  # providers split it over chunks (input first, output last)
                        usage = dict(add_usage(cast(Any, usage), chunk.usage_metadata))
                    text = chunk.content if isinstance(chunk.content, str) else ""
                    if not text:
                        continue
                    if ttft is None:
                        ttft = time.perf_counter() - started
                        metrics.ttft.labels(d.name).observe(ttft)
                    pieces.append(text)
                    if ask.on_token is not None:
                        await ask.on_token(text)
                    if len(pieces) >= ask.max_tokens:  # servers that ignore the limit still stop here
                        break
        except Exception as exc:
            if pieces and ask.on_token is not None:
                raise PartialStreamError(
                    f"{d.name} failed after streaming {len(pieces)} chunks ({classify(exc).reason}); not retried"
                ) from exc
            raise
        finally:
            metrics.in_flight.labels(d.name).dec()
        latency = time.perf_counter() - started
        text = "".join(pieces)
        estimated = usage is None  # e.g. llama.cpp sends no usage on streams: count roughly, and say so
        tokens_in = int(usage["input_tokens"]) if usage else sum(len(str(m.content)) for m in ask.chat) // 4 + 1
        tokens_out = int(usage["output_tokens"]) if usage else len(pieces)
        metrics.tokens.labels(d.name, "in").inc(tokens_in)
        metrics.tokens.labels(d.name, "out").inc(tokens_out)
        return Completion(text, Decision(d.tier, "", ""), d.name, d.model, tokens_in, tokens_out, estimated,
                          d.cost(tokens_in, tokens_out), ttft, latency)  # fmt: skip
