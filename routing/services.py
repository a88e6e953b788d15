"""Build the model client once per process: fleet, router, balancer, cache and ledger."""

from __future__ import annotations

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
    endpoints = resolve_endpoints(settings)
    urls = endpoints.found.get("llm_base_urls") or endpoints.llm_base_url
    if not urls:
        raise ConfigurationError("no model deployments: set ORCHESTRION_MODELS__FLEET_FILE or start `orchestrion up`")
    return embedded_fleet(urls.split(","), LOCAL_MODEL_NAME)


def open_models(settings: Settings, embedder: Embedder, langfuse: Langfuse | None = None) -> ModelClient:
    fleet = configured_fleet(settings)
    classifier = Classifier.load() if ARTEFACT.exists() else None
    router = Router(fleet.rules, classifier, embedder.embed, fleet.tiers)
    prefix, redis_loop = settings.redis.key_prefix, LoopRedis(resolve_endpoints(settings).redis_url)
    balancer = Balancer(FleetState(redis_loop, prefix, fleet.health), fleet.policy)
    cache = ResponseCache(redis_loop, prefix, fleet.cache_ttl_s)
    return ModelClient(fleet, router, balancer, Ledger(redis_loop, prefix), cache, langfuse)
