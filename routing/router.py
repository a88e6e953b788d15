"""The router: which tier answers a request, and why.

Order: a tenant policy that forces a tier; the caller's hint; the rules; the
classifier (embedding and cues), whose second stage sends a request scored just below
the threshold to the large tier when a hard cue (a calculation, a proof, a bug, a
judgement...) is in it. A tenant's cap then lowers the tier if needed. Every decision
names the stage that made it, the score and the threshold, so it can be explained and audited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, Field

from core.errors import InvalidInputError
from routing.classifier import Classifier
from routing.cues import hard_cues
from routing.rules import RuleSettings, apply_rules

TIERS = ("small", "large")


class TenantPolicy(BaseModel):
    force_tier: str | None = Field(default=None, description="Always use this tier.")
    max_tier: str | None = Field(default=None, description="Never use a tier above this one.")
    budget_usd: float | None = Field(default=None, ge=0, description="Spend limit; unset means none.")
    over_budget: Literal["refuse", "downgrade"] = Field(
        default="refuse", description="Over budget: refuse, or answer with the cheapest tier."
    )


@dataclass(frozen=True)
class Decision:
    tier: str
    stage: str  # policy | hint | rule | classifier (its second stage included: the reason says so)
    reason: str
    score: float | None = None
    threshold: float | None = None

    def explain(self) -> dict[str, object]:
        return {"tier": self.tier, "stage": self.stage, "reason": self.reason, "score": self.score,
                "threshold": self.threshold}  # fmt: skip


class Router:
    def __init__(
        self,
        rules: RuleSettings,
        classifier: Classifier | None,
        embed: Callable[[list[str]], list[list[float]]],
        tiers: Sequence[str] = TIERS,
    ) -> None:
        self.rules = rules
        self.classifier = classifier
        self._embed = embed
        self.tiers = list(tiers)

    def decide(
        self, text: str, *, hint: str | None = None, needs_tools: bool = False, policy: TenantPolicy | None = None
    ) -> Decision:
        for name in (hint, policy and policy.force_tier, policy and policy.max_tier):
            if name and name not in self.tiers:
                raise InvalidInputError(f"unknown tier {name!r}: choose from {', '.join(self.tiers)}")
        decision = self._choose(text, hint, needs_tools, policy)
        if policy and policy.max_tier and self.tiers.index(decision.tier) > self.tiers.index(policy.max_tier):
            reason = f"{decision.reason}; capped at {policy.max_tier} by tenant policy"
            return Decision(policy.max_tier, "policy", reason, decision.score, decision.threshold)
        return decision

    def _choose(self, text: str, hint: str | None, needs_tools: bool, policy: TenantPolicy | None) -> Decision:
        if policy and policy.force_tier:
            return Decision(policy.force_tier, "policy", "tenant policy forces this tier")
        if hint:
            return Decision(hint, "hint", "the caller asked for this tier")
        verdict = apply_rules(text, self.rules, needs_tools=needs_tools)
        if verdict is not None:  # the rules speak of the cheapest and the largest tier, whatever their names
            return Decision(self.tiers[-1] if verdict.tier == "large" else self.tiers[0], "rule", verdict.reason)
        if self.classifier is None:
            return Decision(self.tiers[-1], "rule", "no classifier trained: the largest tier is the safe default")
        return self._classify(text, self.classifier)

    def _classify(self, text: str, classifier: Classifier) -> Decision:
        [score] = classifier.probability(self._embed([text]), [text])
        threshold = classifier.threshold
        large = score >= threshold
        reason = f"classifier: P(complex)={score:.3f} {'>=' if large else '<'} threshold {threshold:.3f}"
        if not large and score >= threshold - classifier.band and (cues := hard_cues(text)):
            large = True  # the uncertain band: a hard cue tips it, since a miss costs more than a large answer
            reason += f", within {classifier.band:.2f} of it; second stage: hard cues {', '.join(cues)}"
        tier = self.tiers[-1] if large else self.tiers[0]
        return Decision(tier, "classifier", reason, round(score, 4), round(threshold, 4))
