"""Build the model client once per process: fleet, router, balancer, cache and ledger."""

from __future__ import annotations

import logging

from langfuse import Langfuse

from core.errors import ConfigurationError
from core.settings import Settings
from core.stack import resolve_endpoints
from rag.embedding import Embedder
from routing.balancer import Balancer, FleetState
from routing.classifier import ARTEFACT, Classifier
from routing.client import ModelClient
from routing.fleet import Deployment, Fleet, embedded_fleet, load_fleet
from routing.ledger import Ledger, ResponseCache
from routing.redis_loop import LoopRedis
from routing.router import Router

log = logging.getLogger(__name__)
LOCAL_MODEL_NAME = "gemma-3-270m-q4_k_m"


def configured_fleet(settings: Settings) -> Fleet:
    """The fleet file; else OpenAI's small/large pair when only an OpenAI key is set; else the local servers."""
    models = settings.models
    if models.fleet_file is not None:
        return load_fleet(models.fleet_file)
    if models.openai_api_key and not models.local_llm_url:
        base = models.openai_base_url or "https://api.openai.com/v1"
        pair = [("openai-small", "small", "gpt-4o-mini", 0.15, 0.60), ("openai-large", "large", "gpt-4o", 2.50, 10.0)]
        return Fleet(deployments=[
            Deployment(name=n, tier=t, model=m, base_url=base, api_key_env="OPENAI_API_KEY", price_in_per_m=pi,
                       price_out_per_m=po) for n, t, m, pi, po in pair])  # fmt: skip
    if models.provider_configured and not models.local_llm_url:
        # `up` started no local model for these settings, and they do not say which models to call.
        given = "OPENAI_BASE_URL" if models.openai_base_url else "ANTHROPIC_API_KEY"
        raise ConfigurationError(
            f"{given} is set, but not which models to use there: list them in a fleet file "
            "(ORCHESTRION_MODELS__FLEET_FILE; README, Models); OPENAI_API_KEY alone means gpt-4o-mini / gpt-4o"
        )
    endpoints = resolve_endpoints(settings)
    urls = endpoints.found.get("llm_base_urls") or endpoints.llm_base_url
    if not urls:
        raise ConfigurationError("no model deployments: set ORCHESTRION_MODELS__FLEET_FILE or start `orchestrion up`")
    return embedded_fleet(urls.split(","), LOCAL_MODEL_NAME)


def usable_classifier(embedder: Embedder) -> Classifier | None:
    """The trained classifier, if it was trained on this process's embedding model: its weights mean nothing
    for another model's vectors (and another dimension fails outright). Without it, the rules decide and the
    largest tier is the default."""
    if not ARTEFACT.exists():
        return None
    classifier = Classifier.load()
    spec = embedder.spec
    if classifier.embedding_model != spec.model or len(classifier.weights) != spec.dimension:
        log.warning(
            "router classifier trained on %s (%d-d), this process embeds with %s (%d-d): rules only until "
            "`orchestrion router train` retrains it",
            classifier.embedding_model, len(classifier.weights), spec.model, spec.dimension,
        )  # fmt: skip
        return None
    return classifier


def open_models(settings: Settings, embedder: Embedder, langfuse: Langfuse | None = None) -> ModelClient:
    fleet = configured_fleet(settings)
    router = Router(fleet.rules, usable_classifier(embedder), embedder.embed, fleet.tiers)
    prefix, redis_loop = settings.redis.key_prefix, LoopRedis(resolve_endpoints(settings).redis_url)
    balancer = Balancer(FleetState(redis_loop, prefix, fleet.health), fleet.policy)
    cache = ResponseCache(redis_loop, prefix, fleet.cache_ttl_s)
    return ModelClient(fleet, router, balancer, Ledger(redis_loop, prefix), cache, langfuse, api_keys(settings))


def api_keys(settings: Settings) -> dict[str, str]:
    """The provider keys settings hold (they read `.env` too, which the process environment may not have)."""
    models = settings.models
    held = {"OPENAI_API_KEY": models.openai_api_key, "ANTHROPIC_API_KEY": models.anthropic_api_key}
    return {name: key.get_secret_value() for name, key in held.items() if key is not None}
