"""Router decisions: rules, policies, and the trained classifier on the held-out split."""

from __future__ import annotations

import json
from typing import cast

import pytest

from core.errors import InvalidInputError
from rag.embedding import Embedder, EmbeddingSpec, LocalEmbedder
from routing.classifier import ARTEFACT, DATASET, Classifier, evaluate, load_examples
from routing.router import Router, TenantPolicy
from routing.rules import RuleSettings, apply_rules
from routing.services import usable_classifier

# Documented thresholds (README, bench/RESULTS.md): the router keeps >= 95% of complex
# requests on the large tier while sending at most half of the held-out mix there.
MIN_COMPLEX_RECALL = 0.95
MAX_LARGE_SHARE = 0.50


@pytest.fixture(scope="module")
def embedder() -> LocalEmbedder:
    return LocalEmbedder()


def _router(embedder: LocalEmbedder, rules: RuleSettings | None = None) -> Router:
    return Router(rules or RuleSettings(), Classifier.load(), embedder.embed)


def test_rules_decide_the_obvious_and_abstain_otherwise() -> None:
    everything_on = RuleSettings(short_prompt_words=8, code_goes_large=True)
    assert apply_rules("hello there", everything_on).tier == "small"  # type: ignore[union-attr]
    assert apply_rules("```python\nprint(1)\n```", everything_on).tier == "large"  # type: ignore[union-attr]
    assert apply_rules("word " * 500, everything_on).reason.startswith("rule:length")  # type: ignore[union-attr]
    assert apply_rules("Please summarise the short note below for our whole team", everything_on) is None
    assert apply_rules("hi", RuleSettings(), needs_tools=True).reason.startswith("rule:tools")  # type: ignore[union-attr]
    cues = "Design the architecture step by step and compare the trade-offs"
    assert apply_rules(cues, RuleSettings()).tier == "large"  # type: ignore[union-attr]


def test_policies_and_hints_are_explained(embedder: LocalEmbedder) -> None:
    router = _router(embedder)
    forced = router.decide("Design a multi-region rate limiter", policy=TenantPolicy(force_tier="small"))
    assert (forced.tier, forced.stage) == ("small", "policy")
    capped = router.decide("Design a multi-region rate limiter.", policy=TenantPolicy(max_tier="small"))
    assert capped.tier == "small" and "capped at small" in capped.reason
    assert router.decide("hi", hint="large").explain()["stage"] == "hint"
    with pytest.raises(InvalidInputError, match="unknown tier 'huge'"):
        router.decide("hi", hint="huge")


def test_classifier_decisions_carry_score_and_threshold(embedder: LocalEmbedder) -> None:
    decision = _router(embedder).decide("What is the capital of Portugal?")
    assert decision.stage == "classifier" and decision.tier == "small"
    assert decision.score is not None and decision.threshold is not None and decision.score < decision.threshold


def test_router_meets_its_thresholds_on_the_held_out_split(embedder: LocalEmbedder) -> None:
    heldout = [e for e in load_examples() if e.heldout]
    router = _router(embedder)
    metrics = evaluate([router.decide(e.text).tier == "large" for e in heldout], heldout)
    assert metrics["examples"] >= 100
    assert metrics["complex_recall"] >= MIN_COMPLEX_RECALL, metrics
    assert metrics["large_share"] <= MAX_LARGE_SHARE, metrics


def test_shipped_artefact_was_trained_on_the_shipped_data() -> None:
    import hashlib

    recorded = json.loads(ARTEFACT.read_text())
    assert recorded["metrics"]["dataset_sha256"] == hashlib.sha256(DATASET.read_bytes()).hexdigest()
    assert len(recorded["weights"]) == 384 and recorded["embedding_model"] == "all-MiniLM-L6-v2"


def test_rules_name_the_cheapest_and_largest_of_any_tiers() -> None:
    tiers = ["mini", "mid", "max"]
    router = Router(RuleSettings(short_prompt_words=8), None, lambda texts: [[0.0] for _ in texts], tiers)
    assert router.decide("word " * 500).tier == "max"
    assert router.decide("hello there").tier == "mini"


def test_a_classifier_trained_on_another_embedding_model_is_not_used() -> None:
    class OtherModel:  # an embedder of another model: only its spec is read
        spec = EmbeddingSpec("text-embedding-3-small", 1536, True)

    assert usable_classifier(cast(Embedder, OtherModel())) is None
    assert usable_classifier(LocalEmbedder()) is not None  # the shipped one, for the bundled model
