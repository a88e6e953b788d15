"""Model calls: route, pick a deployment, stream, retry, fail over, account, trace.

A retryable failure (timeout, connection error, 5xx, 429) is retried with jittered
exponential backoff, then the next deployment of the tier is tried, then the next
tier (if the fleet allows). A stream that already gave the caller tokens is never
silently retried: the caller would see text twice.

Callers speak LangChain messages (system, human, AI with tool calls, tool results) and
may bind tools or ask for an output schema; `routing/calls.py` shapes the request for
whichever deployment answers. Agents use it through `routing/chat.py`, a LangChain
chat model, so routing, balancing, budgets and accounting stay inside.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    message_to_dict,
    messages_from_dict,
    messages_to_dict,
)
from langchain_core.messages.ai import add_usage
from langfuse import Langfuse

from core.errors import InvalidInputError, OrchestrionError
from observability.propagation import current_trace_id
from observability.run_trace import note_tier
from routing.balancer import Balancer, Lease
from routing.calls import Ask, Failure, OnChunk, OutputSchema, chat_model, classify, prepare, to_messages, whole_chunk
from routing.fleet import Deployment, Fleet
from routing.ledger import Ledger, Reservation, ResponseCache
from routing.router import Decision, Router

log = logging.getLogger(__name__)
OnToken = Callable[[str], Awaitable[None]]


class ModelUnavailableError(OrchestrionError):
    """Every deployment that could answer failed or is cooling down. The message is for clients and names
    nothing of the fleet; `attempts` (deployment: reason) is for logs and tests."""

    def __init__(self, message: str, attempts: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.attempts = list(attempts)


class BudgetExceededError(OrchestrionError):
    """The tenant has spent its budget and its policy refuses further calls."""


class PartialStreamError(OrchestrionError):
    """A stream broke after tokens reached the caller; it is not retried behind the caller's back."""


@dataclass
class Completion:
    message: AIMessage
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

    @property
    def text(self) -> str:
        return self.message.text

    def public(self) -> dict[str, Any]:
        """What a client is shown (the MCP `complete` tool): the answer's text, not the message object."""
        return {"text": self.text, "decision": self.decision.explain(), "deployment": self.deployment,
                "model": self.model, "tokens_in": self.tokens_in, "tokens_out": self.tokens_out,
                "usage_estimated": self.usage_estimated, "cost_usd": self.cost_usd, "ttft_s": self.ttft_s,
                "latency_s": self.latency_s, "cached": self.cached, "attempts": list(self.attempts)}  # fmt: skip

    def _stored(self) -> dict[str, Any]:
        data = self.public()
        for transient in ("decision", "cached", "text"):
            data.pop(transient)
        return {**data, "message": message_to_dict(self.message)}

    @classmethod
    def _from_stored(cls, stored: dict[str, Any], decision: Decision) -> Completion:
        data = dict(stored)
        [message] = messages_from_dict([data.pop("message")])
        return cls(message=cast(AIMessage, message), decision=decision, **{**data, "cached": True, "cost_usd": 0.0})


# Chat models kept per event loop, the most recently used (a model per deployment and parameters).
CHAT_MODELS_KEPT = 64


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
        """Plain role/content messages in, text out (the MCP `complete` tool)."""

        async def on_chunk(chunk: AIMessageChunk) -> None:
            if on_token is not None and chunk.text:
                await on_token(chunk.text)

        return await self.generate(
            tenant, to_messages(messages), hint=hint, needs_tools=needs_tools, max_tokens=max_tokens,
            temperature=temperature, bypass_cache=bypass_cache, on_chunk=on_chunk if on_token else None,
        )  # fmt: skip

    async def decide(
        self,
        tenant: str,
        chat: Sequence[BaseMessage],
        *,
        hint: str | None = None,
        purpose: str | None = None,
        needs_tools: bool = False,
    ) -> Decision:
        """The tier for a conversation: the caller's hint, else the fleet's tier for the call's purpose
        (planning goes large), else the router on the request, all under the tenant's policy and budget."""
        policy = self.fleet.policy_for(tenant)
        wanted = hint or self.fleet.tier_for_purpose(purpose)
        # Off the event loop: the classifier embeds the prompt, which can wait on the model process.
        decision = await asyncio.to_thread(
            self.router.decide, routed_text(chat, self.fleet.rules.long_prompt_words), hint=wanted,
            needs_tools=needs_tools, policy=policy,
        )  # fmt: skip
        if wanted and not hint and decision.stage == "hint":
            decision = Decision(decision.tier, "rule", f"rule:purpose ({purpose} calls go to {wanted})")
        return await self._within_budget(tenant, decision)

    async def generate(
        self,
        tenant: str,
        chat: Sequence[BaseMessage],
        *,
        hint: str | None = None,
        purpose: str | None = None,
        needs_tools: bool = False,
        tools: Sequence[dict[str, Any]] = (),
        tool_choice: str | None = None,
        schema: OutputSchema | None = None,
        max_tokens: int = 256,
        temperature: float = 0.0,
        bypass_cache: bool = False,
        on_chunk: OnChunk | None = None,
    ) -> Completion:
        """One answer to a conversation: an AI message (text, or tool calls when `tools` are bound; JSON matching
        `schema` when one is given), routed, balanced, retried, cached, accounted and traced."""
        if not chat:
            raise InvalidInputError("a model call needs at least one message")
        decision = await self.decide(tenant, chat, hint=hint, purpose=purpose, needs_tools=needs_tools or bool(tools))
        from observability.instruments import model_metrics

        metrics = model_metrics()
        metrics.decisions.labels(decision.tier, decision.stage).inc()
        params = {"max_tokens": max_tokens, "temperature": temperature, "tools": list(tools),
                  "tool_choice": tool_choice, "schema": schema and [schema.name, schema.schema]}  # fmt: skip
        models = [d.model for d in self.fleet.in_tier(decision.tier)]
        key = self.cache.key(tenant, models, messages_to_dict(list(chat)), params)
        hit = None if bypass_cache else await self.cache.get(key)
        metrics.cache.labels("bypass" if bypass_cache else "hit" if hit else "miss").inc()
        if hit is not None:
            completion = Completion._from_stored(hit, decision)
            if on_chunk is not None:
                await on_chunk(whole_chunk(completion.message))
            return completion
        # A tier the tenant's policy chose (forced, capped, downgraded) is not left for a dearer one.
        policy = self.fleet.policy_for(tenant)
        highest = decision.tier if decision.stage == "policy" else policy.max_tier or self.fleet.tiers[-1]
        ask = Ask(list(chat), max_tokens, temperature, tuple(tools), tool_choice, schema, on_chunk)
        decision, highest, reservation = await self._reserve(tenant, decision, ask, highest)
        try:
            completion = await self._call(decision, ask, highest)
        except BaseException:
            if reservation is not None:
                await asyncio.shield(self.ledger.release(reservation))
            raise
        cost_tier = next(d for d in self.fleet.deployments if d.name == completion.deployment).tier
        await self.ledger.record(
            tenant, cost_tier, completion.tokens_in, completion.tokens_out, completion.cost_usd, reservation
        )
        metrics.cost.labels(tenant, completion.deployment).inc(completion.cost_usd)
        await self.cache.put(key, completion._stored())
        return completion

    async def _reserve(
        self, tenant: str, decision: Decision, ask: Ask, highest: str
    ) -> tuple[Decision, str, Reservation | None]:
        """Hold the call's largest possible cost against the tenant's budget, or downgrade or refuse it."""
        policy = self.fleet.policy_for(tenant)
        if policy.budget_usd is None:
            return decision, highest, None
        order = self._tier_order(decision.tier, highest)
        held = await self.ledger.reserve(
            tenant, self._most_cost(order, ask), policy.budget_usd, self._longest_call_s(order)
        )
        if isinstance(held, Reservation):
            return decision, highest, held
        state = f"${held.spent_usd:.4f} spent and ${held.reserved_usd:.4f} held by calls in flight"
        if policy.over_budget == "downgrade":
            cheapest = self.fleet.tiers[0]
            reason = f"over budget ({state}, of ${policy.budget_usd}): downgraded"
            return Decision(cheapest, "policy", reason), cheapest, None
        raise BudgetExceededError(
            f"tenant {tenant!r} cannot afford this call within its ${policy.budget_usd} budget ({state})"
        )

    def _tier_order(self, tier: str, highest: str) -> list[str]:
        tiers = self.fleet.tiers
        return tiers[tiers.index(tier) : tiers.index(highest) + 1] if self.fleet.fallback_to_next_tier else [tier]

    def _most_cost(self, order: list[str], ask: Ask) -> float:
        """The dearest this call can be on any deployment it may reach: every byte of the request counted as a
        token (byte-level tokenizers never make more) and the whole output limit."""
        request = json.dumps([messages_to_dict(ask.chat), ask.tools, ask.schema and ask.schema.schema])
        tokens_in = len(request.encode()) + 16 * len(ask.chat)
        return max(d.cost(tokens_in, ask.max_tokens) for t in order for d in self.fleet.in_tier(t)) if order else 0.0

    def _longest_call_s(self, order: list[str]) -> float:
        """How long a call can take, every attempt on every deployment timing out: its reservation's lifetime."""
        deployments = [d for t in order for d in self.fleet.in_tier(t)]
        return 60.0 + sum(d.timeout_s for d in deployments) * (self.fleet.retries + 1)

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

    async def _call(self, decision: Decision, ask: Ask, highest: str) -> Completion:
        """Deployments of the decided tier, then (if the fleet falls back) of the tiers above it up to `highest`."""
        attempts: list[str] = []
        order = self._tier_order(decision.tier, highest)
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
                        log.info("%s refused the request: %s", deployment.name, failure.reason,
                                 extra={"deployment": deployment.name})  # fmt: skip
                        # The provider's words say what to change in the request; the deployment stays ours.
                        raise InvalidInputError(f"the model refused the request ({failure.reason})")
                    attempts.append(f"{deployment.name}: {failure.reason}")
                    if opened or not failure.retryable:
                        break
        if not any(self.fleet.in_tier(t) for t in order):
            raise ModelUnavailableError(f"no deployment serves tier {decision.tier!r}" + (
                " or a higher one" if len(order) > 1 else ""))  # fmt: skip
        log.warning("no model deployment could answer", extra={"tier": decision.tier, "attempts": attempts or
                    ["every one is cooling down or at its max_concurrency"]})  # fmt: skip
        trace_id = current_trace_id()
        raise ModelUnavailableError(
            "no model could answer right now; retry later" + (f" (trace id {trace_id})" if trace_id else ""), attempts
        )

    async def _attempt(
        self, lease: Lease, d: Deployment, decision: Decision, ask: Ask
    ) -> Completion | tuple[Failure, bool]:
        """One call on a leased deployment; the lease goes back with the verdict in the same round trip.

        Returns the completion, or the failure and whether the deployment's circuit is now open."""
        state = self.balancer.state
        # Every verdict is shielded: a cancellation arriving while it is on its way to Redis would leave the
        # lease to expire (timeout + margin), counted as a stalled call that steers traffic away meanwhile.
        try:
            result = await self._traced(d, decision, ask)
        except PartialStreamError:
            self._count_error(d, Failure(False, None, "partial stream"))
            await asyncio.shield(state.failed(lease))
            raise
        except Exception as exc:  # noqa: BLE001 - classified here; only deliberate errors escape
            failure = classify(exc)
            self._count_error(d, failure)
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

    @staticmethod
    def _count_error(d: Deployment, failure: Failure) -> None:
        from observability.instruments import model_metrics

        kind = "refused" if failure.request_refused else failure.reason  # the provider's words are unbounded
        model_metrics().errors.labels(d.name, kind).inc()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.fleet.backoff_max_s, self.fleet.backoff_base_s * 2**attempt)
        return self._rng.uniform(0, ceiling)  # full jitter: retries of many callers spread out

    async def _traced(self, d: Deployment, decision: Decision, ask: Ask) -> Completion:
        """One attempt as a Langfuse generation: model, usage, cost, TTFT, and the routing decision."""
        note_tier(d.tier)
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
            output: Any = result.text
            if result.message.tool_calls:
                output = {"content": result.text, "tool_calls": result.message.tool_calls}
            generation.update(
                output=output,
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

    async def _stream(self, d: Deployment, ask: Ask) -> Completion:
        from observability.instruments import model_metrics

        metrics = model_metrics()
        prepared = prepare(self._chat_model(d, ask.max_tokens, ask.temperature), d, ask)
        metrics.in_flight.labels(d.name).inc()
        started = time.perf_counter()
        ttft: float | None = None
        chunks = 0
        sent = False  # whether anything reached the caller: from then on a failure is not retried
        merged: AIMessageChunk | None = None
        usage: dict[str, Any] | None = None
        try:
            async with asyncio.timeout(d.timeout_s):
                # No callbacks inherited: the caller (routing/chat.py) reports this call's tokens once, itself.
                async for chunk in prepared.runnable.astream(prepared.messages, config={"callbacks": []}):
                    if not isinstance(chunk, AIMessageChunk):
                        continue
                    if chunk.usage_metadata:  # providers split it over chunks (input first, output last)
                        usage = dict(add_usage(cast(Any, usage), chunk.usage_metadata))
                    merged = chunk if merged is None else merged + chunk
                    if not chunk.text and not chunk.tool_call_chunks:
                        continue
                    if ttft is None:
                        ttft = time.perf_counter() - started
                        metrics.ttft.labels(d.name, d.tier).observe(ttft)
                    chunks += 1
                    if ask.on_chunk is not None and prepared.streams:
                        sent = True
                        await ask.on_chunk(AIMessageChunk(content=chunk.content,
                                                          tool_call_chunks=chunk.tool_call_chunks))  # fmt: skip
                    if chunks >= ask.max_tokens:  # servers that ignore the limit still stop here
                        break
        except Exception as exc:
            if sent:
                raise PartialStreamError(
                    f"{d.name} failed after streaming {chunks} chunks ({classify(exc).reason}); not retried"
                ) from exc
            raise
        finally:
            metrics.in_flight.labels(d.name).dec()
        latency = time.perf_counter() - started
        message = prepared.finish(_as_message(merged))
        if ask.on_chunk is not None and not prepared.streams:
            await ask.on_chunk(whole_chunk(message))
        estimated = usage is None  # e.g. llama.cpp sends no usage on streams: count roughly, and say so
        tokens_in = int(usage["input_tokens"]) if usage else sum(len(str(m.content)) for m in ask.chat) // 4 + 1
        tokens_out = int(usage["output_tokens"]) if usage else chunks
        metrics.tokens.labels(d.name, d.tier, "in").inc(tokens_in)
        metrics.tokens.labels(d.name, d.tier, "out").inc(tokens_out)
        metrics.latency.labels(d.name, d.tier).observe(latency)
        if ttft is not None and latency > ttft and tokens_out > 1:
            metrics.token_rate.labels(d.name, d.tier).observe((tokens_out - 1) / (latency - ttft))
        message.usage_metadata = {"input_tokens": tokens_in, "output_tokens": tokens_out,
                                  "total_tokens": tokens_in + tokens_out}  # fmt: skip
        message.response_metadata = {**message.response_metadata, "model_name": d.model, "deployment": d.name,
                                     "tier": d.tier}  # fmt: skip
        return Completion(message, Decision(d.tier, "", ""), d.name, d.model, tokens_in, tokens_out, estimated,
                          d.cost(tokens_in, tokens_out), ttft, latency)  # fmt: skip


def _as_message(merged: AIMessageChunk | None) -> AIMessage:
    """The streamed chunks as one message: text joined, tool-call pieces assembled into tool calls."""
    if merged is None:
        return AIMessage(content="")
    return AIMessage(
        content=merged.content,
        tool_calls=merged.tool_calls,
        invalid_tool_calls=merged.invalid_tool_calls,
        response_metadata=merged.response_metadata,
    )


def routed_text(chat: Sequence[BaseMessage], long_words: int) -> str:
    """What the router reads: the latest request, or the whole conversation once that is long (a long
    context is a reason for the large tier by itself)."""
    texts = [m.text for m in chat]
    if sum(len(t.split()) for t in texts) >= long_words:
        return "\n".join(texts)
    request = next((m for m in reversed(chat) if isinstance(m, HumanMessage)), chat[-1])
    return request.text
