"""What the agents are given: a chat model per call purpose, the toolbox, the long-call dispatcher, settings.

Nothing here is imported as a global by the nodes: the graph builder binds one `AgentDeps` to them, so tests
give scripted chat models and in-process test tools, and production gives the routed model client.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from langchain_core.language_models.chat_models import BaseChatModel

from core.settings import AgentSettings
from tools.long_calls import LongCalls
from tools.toolbox import Toolbox

# (tenant, purpose, max_tokens) -> a chat model whose calls are made for that tenant.
ChatFactory = Callable[[str, str, int], BaseChatModel]


@dataclass
class AgentDeps:
    chat: ChatFactory
    toolbox: Toolbox
    settings: AgentSettings
    can_plan: Callable[[str], Awaitable[bool]]  # (tenant) -> whether the planning tier's models can plan
    long_calls: LongCalls | None = None  # None: long tools run in-process (no queue in this process)
    search_tool: str = "search_documents"


def routed_deps(models: object, toolbox: Toolbox, settings: AgentSettings, long_calls: LongCalls | None) -> AgentDeps:
    """Deps whose every model call goes through the router (routing/chat.py)."""
    from routing.chat import RoutedChatModel
    from routing.client import ModelClient

    assert isinstance(models, ModelClient)

    # One model per (tenant, purpose, max_tokens), shared by the runs: a model holds no call state, and LangChain
    # serialises each instance for its callbacks on its first call, which a model per call would pay every time.
    @functools.lru_cache(maxsize=4096)
    def chat(tenant: str, purpose: str, max_tokens: int) -> BaseChatModel:
        return RoutedChatModel(client=models, tenant=tenant, purpose=purpose, max_tokens=max_tokens)

    async def can_plan(tenant: str) -> bool:
        if settings.planner != "auto":
            return settings.planner == "model"
        from langchain_core.messages import HumanMessage

        decision = await models.decide(tenant, [HumanMessage("plan")], purpose="plan")
        return models.fleet.can_plan(decision.tier)

    return AgentDeps(chat, toolbox, settings, can_plan, long_calls)
