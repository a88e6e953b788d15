"""Rule stage of the router: cheap, explainable signals that settle the obvious cases.

A rule either decides a tier with its reason, or abstains and leaves the request to
the classifier. Every threshold is a setting, so an operator can tune cost vs quality.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import BaseModel, Field

CODE = re.compile(
    r"```|^\s{4,}\S|\bdef \w+\(|\bclass \w+[:(]|\bfunction \w+\(|=>|;\s*$|\bimport \w+|#include|\bSELECT\b.+\bFROM\b",
    re.MULTILINE | re.IGNORECASE,
)
REASONING = re.compile(
    r"\b(step[- ]by[- ]step|why (does|do|is|are|did)|design|architect\w*|trade-?offs?|prove|derive|plan\b|"
    r"root[- ]cause|debug\w*|refactor\w*|optimi[sz]e|compare|analy[sz]e|evaluate|strategy|implement)\b",
    re.IGNORECASE,
)


class RuleSettings(BaseModel):
    long_prompt_words: int = Field(default=400, ge=1, description="Prompts this long go to the large tier.")
    # Defaults measured on the held-out split (bench/routing): short prompts can be hard ("Design a
    # rate limiter") and simple ones often quote code, so those two rules are off unless enabled.
    short_prompt_words: int = Field(
        default=0, ge=0, description="Prompts this short, with no other signal, go to the small tier (0 = off)."
    )
    code_goes_large: bool = Field(default=False, description="Code in the prompt sends it to the large tier.")
    reasoning_cues_for_large: int = Field(
        default=3, ge=1, description="This many distinct reasoning cues send a prompt to the large tier."
    )
    tools_go_large: bool = Field(default=True, description="Requests that need tool calls go to the large tier.")


@dataclass(frozen=True)
class RuleVerdict:
    tier: str
    reason: str


def apply_rules(text: str, rules: RuleSettings, *, needs_tools: bool = False) -> RuleVerdict | None:
    """The first rule that fires, or None to let the classifier decide."""
    words = len(text.split())
    if needs_tools and rules.tools_go_large:
        return RuleVerdict("large", "rule:tools (the request needs tool calls)")
    if words >= rules.long_prompt_words:
        return RuleVerdict("large", f"rule:length ({words} words >= {rules.long_prompt_words})")
    if rules.code_goes_large and CODE.search(text):
        return RuleVerdict("large", "rule:code (the prompt contains code)")
    cues = {m.group(0).lower() for m in REASONING.finditer(text)}
    if len(cues) >= rules.reasoning_cues_for_large:
        return RuleVerdict("large", f"rule:reasoning ({', '.join(sorted(cues))})")
    if words <= rules.short_prompt_words and not cues:
        return RuleVerdict("small", f"rule:short ({words} words <= {rules.short_prompt_words}, no cues)")
    return None
