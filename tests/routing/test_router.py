"""Router decisions: rules, policies, the cues and the second stage one by one, and the trained classifier on the
held-out split and on the independent evaluation set (routing/data/independent.jsonl, never trained on)."""

from __future__ import annotations

import json
from typing import cast

import pytest

from bench.routing import Scored, mix_cut
from core.errors import InvalidInputError
from rag.chunking import bundled_token_counter
from rag.embedding import Embedder, EmbeddingSpec, LocalEmbedder
from routing.classifier import (
    ARTEFACT,
    INDEPENDENT,
    TRAINING_FILES,
    Classifier,
    Example,
    datasets_sha256,
    evaluate,
    load_examples,
    training_examples,
)
from routing.cues import FEATURE_NAMES, HARD_NAMES, features, hard_cues, split_instruction
from routing.router import Router, TenantPolicy
from routing.rules import RuleSettings, apply_rules
from routing.services import usable_classifier

# Targets (issue 14, README "Models", bench/results/routing.md): on data the router never saw, >= 95% of complex
# requests stay on the large tier, and the cost cut vs all-large on a 70/30 simple/complex mix is >= 60%.
MIN_COMPLEX_RECALL = 0.95
MIN_COST_CUT = 0.60
# What the shipped router does keep small of the independent set's simple requests (65.4% when this was written):
# a floor, so a retrain that buys recall by sending everything large fails here.
MIN_SIMPLE_KEPT_SMALL = 0.62


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


@pytest.fixture(scope="module")
def batch_embedded_router(embedder: LocalEmbedder) -> Router:
    """The shipped router, the held-out and independent texts embedded once in batches (the same vectors one at a
    time would give, in a fraction of the time)."""
    texts = sorted({e.text for e in training_examples() if e.heldout} | {e.text for e in load_examples(INDEPENDENT)})
    vectors = dict(zip(texts, embedder.embed(texts), strict=True))
    return Router(RuleSettings(), Classifier.load(), lambda batch: [vectors[t] for t in batch])


@pytest.fixture(scope="module")
def independent_metrics(batch_embedded_router: Router) -> tuple[dict[str, float], float]:
    examples = load_examples(INDEPENDENT)
    large = [batch_embedded_router.decide(e.text).tier == "large" for e in examples]
    texts = sorted({e.text for e in examples})
    tokens = dict(zip(texts, bundled_token_counter().count_many(texts), strict=True))
    cut, _oracle = mix_cut(Scored("independent", examples, large), tokens, 1000, seed=20261126)
    return evaluate(large, examples), cut


def test_router_keeps_complex_requests_large_on_the_held_out_split(batch_embedded_router: Router) -> None:
    heldout = [e for e in training_examples() if e.heldout]
    metrics = evaluate([batch_embedded_router.decide(e.text).tier == "large" for e in heldout], heldout)
    assert metrics["examples"] >= 180
    assert metrics["complex_recall"] >= MIN_COMPLEX_RECALL, metrics


def test_router_meets_the_recall_target_on_the_independent_set(
    independent_metrics: tuple[dict[str, float], float],
) -> None:
    metrics, _cut = independent_metrics
    assert metrics["examples"] >= 300
    assert metrics["complex_recall"] >= MIN_COMPLEX_RECALL, metrics
    assert metrics["simple_to_small"] >= MIN_SIMPLE_KEPT_SMALL, metrics


@pytest.mark.xfail(
    strict=True,
    reason="not met: 43.3% cut at 97.7% recall on the independent set; no threshold of this model reaches 60% at "
    ">= 95% recall there (best 50.2%); bench/results/routing.md",
)
def test_router_meets_the_cost_target_on_the_independent_set(
    independent_metrics: tuple[dict[str, float], float],
) -> None:
    metrics, cut = independent_metrics
    assert metrics["complex_recall"] >= MIN_COMPLEX_RECALL and cut >= MIN_COST_CUT, (metrics, cut)


def test_the_independent_set_is_apart_from_the_training_data() -> None:
    independent = load_examples(INDEPENDENT)
    training = training_examples()
    assert INDEPENDENT not in TRAINING_FILES
    assert not {e.text.lower() for e in independent} & {e.text.lower() for e in training}
    assert not {e.id for e in independent} & {e.id for e in training}
    assert sum(e.complex for e in independent) >= 120 and sum(not e.complex for e in independent) >= 150
    short_hard = [e for e in independent if e.complex and len(e.text.split()) <= 20]
    long_easy = [e for e in independent if not e.complex and len(e.text.split()) >= 40]
    assert len(short_hard) >= 100 and len(long_easy) >= 50


def test_shipped_artefact_was_trained_on_the_shipped_data() -> None:
    recorded = json.loads(ARTEFACT.read_text())
    assert recorded["metrics"]["dataset_sha256"] == datasets_sha256()  # both training files, not the independent set
    assert len(recorded["weights"]) == 384 and recorded["embedding_model"] == "all-MiniLM-L6-v2"
    assert recorded["feature_names"] == list(FEATURE_NAMES) and len(recorded["feature_weights"]) == len(FEATURE_NAMES)


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


@pytest.mark.parametrize(
    ("cue", "hard", "easy"),
    [
        ("probability", "Two dice: chance the sum is 7?", "Tell me about a dog."),
        ("quantity_question", "How many ways can 5 books stand on a shelf?", "Name a colour."),
        ("algebra", "Solve 2x + 3 = 11 for x.", "What is a noun?"),
        ("proof", "Prove that every prime above 2 is odd.", "Who wrote Hamlet?"),
        ("bug", "what's wrong with if x = 1: print(x)", "Fix the spelling: 'recieve'"),
        ("write_code", "Write a function that reverses a string.", "What does print() do?"),
        ("judgement", "My landlord kept my deposit. Can he do that?", "What is a landlord?"),
        ("decision", "Should I repair my old car or buy a new one?", "What is a car?"),
        ("planning", "Plan a three-day walking itinerary in the Alps.", "What are the Alps?"),
    ],
)
def test_each_hard_cue_fires_on_its_kind_of_request_and_not_on_a_plain_one(cue: str, hard: str, easy: str) -> None:
    assert cue in HARD_NAMES
    assert cue in hard_cues(hard), hard_cues(hard)
    assert cue not in hard_cues(easy), hard_cues(easy)


def test_cues_read_the_instruction_not_the_text_it_carries() -> None:
    carried = "'Prove that the tenant should pay: the probability of a bug in the contract is high, so who pays?'"
    summarise = f"Translate this into German: {carried}"
    instruction, payload = split_instruction(summarise)
    assert instruction == "Translate this into German" and payload.startswith("'Prove")
    assert hard_cues(summarise) == []
    by_name = dict(zip(FEATURE_NAMES, features(summarise), strict=True))
    assert by_name["easy_transform"] == 1.0 and by_name["payload_share"] > 0.8
    assert "proof" in hard_cues(carried.strip("'"))  # the same words as the request itself do count
    assert split_instruction("What's the capital of Peru?") == ("What's the capital of Peru?", "")  # an apostrophe


def test_underspecified_requests_are_flagged() -> None:
    def flag(text: str) -> float:
        return dict(zip(FEATURE_NAMES, features(text), strict=True))["underspecified"]

    assert flag("Make it better.") == 1.0 and flag("Is it worth it?") == 1.0
    assert flag("What is the capital of Peru?") == 0.0 and flag("Convert 5 miles to km, is that right?") == 0.0


def _banded(score: float, threshold: float = 0.5, band: float = 0.1) -> Classifier:
    """A classifier whose every request scores `score` (zero weights, the bias set), to drive the second stage."""
    import math

    bias = math.log(score / (1 - score))
    return Classifier("test", [0.0, 0.0], bias, threshold, {}, list(FEATURE_NAMES), [0.0] * len(FEATURE_NAMES), band)


def test_second_stage_sends_an_uncertain_request_with_a_hard_cue_large() -> None:
    embed = lambda texts: [[0.0, 0.0] for _ in texts]  # noqa: E731
    in_band = Router(RuleSettings(), _banded(0.45), embed)
    tipped = in_band.decide("Chance of two heads in three coin flips?")
    assert (tipped.tier, tipped.stage) == ("large", "classifier")
    assert "second stage: hard cues probability" in tipped.reason
    assert (tipped.score, tipped.threshold) == (0.45, 0.5)
    plain = in_band.decide("What is the capital of Peru?")  # same score, no hard cue
    assert plain.tier == "small" and "second stage" not in plain.reason
    below_band = Router(RuleSettings(), _banded(0.35), embed).decide("Chance of two heads in three coin flips?")
    assert below_band.tier == "small"  # a cue does not rescue a request the classifier is sure about
    assert Router(RuleSettings(), _banded(0.55), embed).decide("What is the capital of Peru?").tier == "large"


def test_a_classifier_with_cues_needs_the_texts() -> None:
    with pytest.raises(ValueError, match="pass the texts"):
        _banded(0.5).probability([[0.0, 0.0]])


def test_an_artefact_trained_with_other_cues_is_refused(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from core.errors import ConfigurationError

    stale = json.loads(ARTEFACT.read_text())
    stale["feature_names"] = [*stale["feature_names"][:-1], "a_cue_that_is_gone"]
    path = Path(str(tmp_path)) / "classifier.json"
    path.write_text(json.dumps(stale))
    with pytest.raises(ConfigurationError, match="router train"):
        Classifier.load(path)


def test_examples_keep_their_labels() -> None:
    assert all(e.label in {"simple", "complex"} for e in training_examples() + load_examples(INDEPENDENT))
    assert isinstance(training_examples()[0], Example)
