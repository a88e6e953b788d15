"""The model client as a LangChain chat model: tools, tool messages, structured output shaped per deployment,
token streaming into LangGraph's `messages` mode. Against an OpenAI-compatible server whose answers the test
scripts (tool calls streamed in pieces, as providers stream them), and the real local model for a grammar-
constrained JSON answer."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any, TypedDict

import anyio
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langgraph.graph import END, START, StateGraph
from pydantic import BaseModel, Field

from routing.balancer import Balancer, FleetState, HealthSettings
from routing.chat import RoutedChatModel
from routing.client import ModelClient
from routing.fleet import Deployment, Fleet, embedded_fleet
from routing.ledger import Ledger, ResponseCache
from routing.redis_loop import LoopRedis
from routing.router import Router
from tests.provider_simulator import ProviderSimulator

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


class Verdict(BaseModel):
    """Whether a claim holds."""

    holds: bool
    reason: str = Field(max_length=200)


def _client(valkey: str, fleet: Fleet) -> ModelClient:
    redis, prefix = LoopRedis(valkey), f"t-{uuid.uuid4().hex[:8]}"
    router = Router(fleet.rules, None, lambda texts: [[0.0] for _ in texts], fleet.tiers)
    balancer = Balancer(FleetState(redis, prefix, HealthSettings()), "least_connections")
    return ModelClient(fleet, router, balancer, Ledger(redis, prefix), ResponseCache(redis, prefix, 0))


@pytest.fixture
def provider() -> Iterator[ProviderSimulator]:
    sim = ProviderSimulator("sim")
    yield sim
    sim.close()


def _model(valkey: str, sim: ProviderSimulator, **deployment: Any) -> RoutedChatModel:
    fleet = Fleet(
        deployments=[
            Deployment(name="sim", tier=t, model="sim", base_url=sim.base_url, **deployment) for t in ("small",)
        ],
        tiers=["small"],
    )
    return RoutedChatModel(client=_client(valkey, fleet), tenant="acme", max_tokens=64)


def test_bound_tools_come_back_as_tool_calls_assembled_from_streamed_pieces(
    valkey: str, provider: ProviderSimulator
) -> None:
    provider.behaviour.reply = {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Kinshasa"}}]}
    model = _model(valkey, provider).bind_tools([WEATHER], tool_choice="get_weather")

    reply = anyio.run(model.ainvoke, [HumanMessage("Weather in Kinshasa?")])

    assert isinstance(reply, AIMessage)
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Kinshasa"})]
    sent = provider.behaviour.bodies[-1]
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tool_choice"]["function"]["name"] == "get_weather"
    assert reply.usage_metadata and reply.usage_metadata["total_tokens"] == 13
    assert reply.response_metadata["deployment"] == "sim" and reply.response_metadata["decision"]["tier"] == "small"


def test_tool_results_go_back_as_tool_messages(valkey: str, provider: ProviderSimulator) -> None:
    provider.behaviour.reply = {"content": "It is 31 degrees in Kinshasa."}
    history = [
        HumanMessage("Weather in Kinshasa?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Kinshasa"}, "id": "call_1"}]),
        ToolMessage('{"celsius": 31}', tool_call_id="call_1"),
    ]

    reply = anyio.run(_model(valkey, provider).bind_tools([WEATHER]).ainvoke, history)

    assert reply.text == "It is 31 degrees in Kinshasa."
    roles = [(m["role"], m.get("tool_call_id")) for m in provider.behaviour.bodies[-1]["messages"]]
    assert roles == [("user", None), ("assistant", None), ("tool", "call_1")]


def test_a_server_without_tool_calling_is_asked_for_its_calls_as_json(valkey: str, provider: ProviderSimulator) -> None:
    provider.behaviour.reply = {
        "content": json.dumps({"tool_calls": [{"name": "get_weather", "arguments": {"city": "Goma"}}], "content": ""})
    }
    model = _model(valkey, provider, tool_calling=False, structured_output="json_object_schema")
    history = [
        HumanMessage("Weather in Goma?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Bukavu"}, "id": "c0"}]),
        ToolMessage("rain", tool_call_id="c0"),
    ]

    reply = anyio.run(model.bind_tools([WEATHER]).ainvoke, history)

    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("get_weather", {"city": "Goma"})]
    sent = provider.behaviour.bodies[-1]
    assert "tools" not in sent
    assert sent["response_format"]["type"] == "json_object"
    assert sent["response_format"]["schema"]["properties"]["tool_calls"]["items"]["properties"]["name"]["enum"] == [
        "get_weather"
    ]
    # tool roles become text for a chat template that has none
    assert {m["role"] for m in sent["messages"]} <= {"user", "assistant", "system"}
    assert any("[result of tool call c0]" in str(m["content"]) for m in sent["messages"])


@pytest.mark.parametrize("mode", ["tool_calling", "json_schema", "json_object_schema", "json_object"])
def test_structured_output_is_shaped_for_each_deployment(valkey: str, provider: ProviderSimulator, mode: str) -> None:
    answer = {"holds": False, "reason": "okapis live in rainforests"}
    provider.behaviour.reply = (
        {"tool_calls": [{"name": "Verdict", "arguments": answer}]}
        if mode == "tool_calling"
        else {"content": json.dumps(answer)}
    )
    model = _model(valkey, provider, structured_output=mode).with_structured_output(Verdict)

    verdict = anyio.run(model.ainvoke, [SystemMessage("Judge."), HumanMessage("Okapis live in deserts.")])

    assert verdict == Verdict(**answer)
    sent = provider.behaviour.bodies[-1]
    if mode == "tool_calling":
        assert sent["tool_choice"]["function"]["name"] == "Verdict" and "response_format" not in sent
    else:
        fmt = sent["response_format"]
        assert fmt["type"] == ("json_schema" if mode == "json_schema" else "json_object")
        assert ("schema" in fmt) == (mode == "json_object_schema")
        assert "JSON schema" in sent["messages"][-1]["content"]  # the schema is in the instruction too


def test_an_answer_that_does_not_validate_says_what_is_wrong(valkey: str, provider: ProviderSimulator) -> None:
    from langchain_core.exceptions import OutputParserException

    provider.behaviour.reply = {"content": json.dumps({"holds": "perhaps"})}
    model = _model(valkey, provider, structured_output="json_schema").with_structured_output(Verdict, include_raw=True)

    reply = anyio.run(model.ainvoke, "Okapis live in deserts.")

    assert reply["parsed"] is None and isinstance(reply["parsing_error"], OutputParserException)
    assert "holds: Input should be a valid boolean" in str(reply["parsing_error"])
    assert "reason: Field required" in str(reply["parsing_error"])


def test_tokens_stream_into_langgraph_messages_mode(valkey: str, provider: ProviderSimulator) -> None:
    provider.behaviour.reply = {"content": "Okapis live in the Ituri rainforest."}
    model = _model(valkey, provider)

    class State(TypedDict):
        answer: str

    async def node(state: State) -> dict[str, str]:
        return {"answer": (await model.ainvoke([HumanMessage("Where do okapis live?")])).text}

    graph: StateGraph[Any, Any, Any, Any] = StateGraph(State)
    graph.add_node("answer", node)  # type: ignore[call-overload]
    graph.add_edge(START, "answer")
    graph.add_edge("answer", END)

    async def run() -> list[str]:
        pieces = []
        async for chunk, _meta in graph.compile().astream({"answer": ""}, stream_mode="messages"):
            if chunk.content:
                pieces.append(chunk.content)
        return pieces

    pieces = anyio.run(run)
    assert len(pieces) == 2 and "".join(pieces) == "Okapis live in the Ituri rainforest."  # as the server streamed


def test_the_local_model_answers_a_schema_with_grammar_constrained_json(valkey: str, local_llm: str) -> None:
    model = RoutedChatModel(
        client=_client(valkey, embedded_fleet([local_llm], "gemma-3-270m")), tenant="acme", max_tokens=120
    ).with_structured_output(Verdict, include_raw=True)

    reply = anyio.run(model.ainvoke, "Is the sky green? Answer as JSON.")

    assert reply["parsing_error"] is None, reply["raw"].text  # llama.cpp held Gemma to the schema
    assert isinstance(reply["parsed"], Verdict)
