"""The model fleet: deployments by tier, from one YAML/TOML/JSON file, or the embedded default."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from core.errors import ConfigurationError
from routing.balancer import HealthSettings, Policy
from routing.router import TIERS, TenantPolicy
from routing.rules import RuleSettings

# Illustrative list prices (USD per million tokens) for the embedded fleet, where both tiers are
# the same local model: they make the accounting and the routing benchmark show what routing
# saves at typical small/large price points. Real deployments state their own prices.
ASSUMED_SMALL_PRICES = (0.15, 0.60)
ASSUMED_LARGE_PRICES = (2.50, 10.00)


class Deployment(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    tier: str
    provider: Literal["openai", "anthropic", "ollama"] = Field(
        default="openai", description="openai = any OpenAI-compatible base URL (OpenAI, vLLM, llama.cpp, Ollama /v1)."
    )
    model: str
    base_url: str | None = None
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    price_in_per_m: float = Field(default=0.0, ge=0, description="USD per million input tokens.")
    price_out_per_m: float = Field(default=0.0, ge=0, description="USD per million output tokens.")
    max_concurrency: int = Field(
        default=32,
        ge=1,
        description="Calls in flight at once across every process (live leases); a full deployment is passed "
        "over, and when all of a tier's are full the call falls back or is refused with that reason.",
    )
    weight: float = Field(default=1.0, gt=0)
    timeout_s: float = Field(default=60.0, gt=0)
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = Field(
        default="max_completion_tokens",
        description="How the server wants the output limit (llama.cpp and older servers ignore max_completion_tokens).",
    )
    tool_calling: bool = Field(
        default=True,
        description="The server takes tools and answers with tool calls; otherwise calls with tools are asked for "
        "their tool calls as JSON (routing/calls.py) and tool results are sent as text.",
    )
    can_plan: bool = Field(
        default=True,
        description="The model follows a planning prompt well enough to be asked for a plan; the agents use a "
        "fixed plan (retrieve, then answer) on a tier with no such model (the bundled Gemma 270M cannot).",
    )
    structured_output: Literal["tool_calling", "json_schema", "json_object_schema", "json_object"] = Field(
        default="tool_calling",
        description="How to get a JSON answer matching a schema: a forced tool call, OpenAI's json_schema "
        "response format, a json_object response format with a `schema` (llama.cpp: grammar-constrained), or "
        "plain JSON mode with the schema in the prompt.",
    )

    def cost(self, tokens_in: int, tokens_out: int) -> float:
        return (tokens_in * self.price_in_per_m + tokens_out * self.price_out_per_m) / 1_000_000


class Fleet(BaseModel):
    deployments: list[Deployment] = Field(min_length=1)
    tiers: list[str] = Field(default=list(TIERS), min_length=1, description="Cheapest first.")
    policy: Policy = "latency_aware"
    fallback_to_next_tier: bool = Field(default=True, description="When a tier has no healthy deployment left.")
    retries: int = Field(default=2, ge=0, description="Retries of a retryable error before trying another deployment.")
    backoff_base_s: float = Field(default=0.2, gt=0)
    backoff_max_s: float = Field(default=5.0, gt=0)
    cache_ttl_s: int = Field(default=3600, ge=0, description="Exact-match response cache lifetime; 0 disables.")
    health: HealthSettings = Field(default_factory=HealthSettings)
    rules: RuleSettings = Field(default_factory=RuleSettings)
    tenants: dict[str, TenantPolicy] = Field(default_factory=dict)
    purpose_tiers: dict[str, str] = Field(
        default_factory=dict,
        description="Tier for calls made for a purpose (the agents' `plan`, `rewrite`, `arguments`, `answer`), "
        "before the router reads the request; a tenant's policy still applies. Planning goes to the largest tier "
        "unless this names another.",
    )

    @model_validator(mode="after")
    def _tiers_known(self) -> Fleet:
        unknown = {d.tier for d in self.deployments} - set(self.tiers)
        if unknown:
            raise ValueError(f"deployments name unknown tiers {sorted(unknown)}; tiers are {self.tiers}")
        names = [d.name for d in self.deployments]
        if len(names) != len(set(names)):
            raise ValueError("deployment names must be unique")
        wrong = {p: t for p, t in self.purpose_tiers.items() if t not in self.tiers}
        if wrong:
            raise ValueError(f"purpose_tiers name unknown tiers {wrong}; tiers are {self.tiers}")
        return self

    def in_tier(self, tier: str) -> list[Deployment]:
        return [d for d in self.deployments if d.tier == tier]

    def tier_for_purpose(self, purpose: str | None) -> str | None:
        if purpose is None:
            return None
        return self.purpose_tiers.get(purpose) or (self.tiers[-1] if purpose == "plan" else None)

    def can_plan(self, tier: str) -> bool:
        return any(d.can_plan for d in self.in_tier(tier))

    def policy_for(self, tenant: str) -> TenantPolicy:
        return self.tenants.get(tenant, TenantPolicy())


def load_fleet(path: Path) -> Fleet:
    try:
        text = path.read_text()
        raw = (
            yaml.safe_load(text)
            if path.suffix in (".yaml", ".yml")
            else tomllib.loads(text)
            if path.suffix == ".toml"
            else json.loads(text)
        )
        return Fleet.model_validate(raw)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, ValidationError):
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigurationError(f"fleet file {path}: {problems}") from None
        raise ConfigurationError(f"fleet file {path}: {exc}") from None


def embedded_fleet(base_urls: list[str], model: str) -> Fleet:
    """Both tiers on the local llama.cpp replicas: routing and balancing work for real, at no cost."""
    deployments = []
    for i, url in enumerate(base_urls):
        for tier, (p_in, p_out) in (("small", ASSUMED_SMALL_PRICES), ("large", ASSUMED_LARGE_PRICES)):
            deployments.append(
                Deployment(
                    name=f"local-{tier}-{i + 1}",
                    tier=tier,
                    model=model,
                    base_url=url,
                    price_in_per_m=p_in,
                    price_out_per_m=p_out,
                    max_tokens_param="max_tokens",
                    # llama-cpp-python's server: no tool roles in Gemma's chat format; JSON answers are
                    # constrained to a schema by a grammar.
                    tool_calling=False,
                    structured_output="json_object_schema",
                    can_plan=False,
                    timeout_s=120,
                )
            )
    return Fleet(deployments=deployments)
