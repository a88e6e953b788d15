"""Surface cues beside the embedding: what a sentence embedding blurs in a short request.

A short request that needs reasoning ("Chance the sum of two dice is at least 10?", "find the bug: if (x = 5)")
embeds close to a short lookup: the embedding says what a request is about, not how much work it asks for. These
cues say the second: a calculation over given numbers, a proof, code with a question about its behaviour, a
judgement on the asker's own facts, a decision or plan under constraints. Others say a request only transforms
text it carries (translate, summarise, reformat), however long that text is. Each cue is a number in [0, 1]; the
classifier learns their weights beside the embedding's, and the router's second stage reads the hard ones by name.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

_I = re.IGNORECASE

NUMBER = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*(?:\.\d+)?%?")
CODE_TOKENS = re.compile(
    r"```|`[^`]+`|==|!=|<=|>=|\+\+|\+=|=>|->|::|\w+\([^)]*\)|\[[^\]]*\]|\{[^}]*\}|;\s*$|^\s{4,}\S|"
    r"\b(def|lambda|return|elif|const|let|var|function|printf?|SELECT|FROM|WHERE|JOIN|null|None|True|False)\b",
    re.MULTILINE,
)

# Hard cues: each names a kind of work that a small model gets wrong more often than it gets it right.
HARD = {
    "probability": re.compile(
        r"\b(probabilit\w*|chances?|odds|expected (number|value)|at least one|dice|die|coins?|deck|cards?|"
        r"marbles?|without replacement|random(ly)?|birthday)\b", _I),
    "quantity_question": re.compile(
        r"\b(how (many|long|much|far|fast|old)|what (fraction|percentage|share)|in how many|how many ways|"
        r"at (most|least)|cheapest|fastest|shortest|minimum|maximum|catch up|break even|"
        r"average speed|total (cost|discount|time)|monthly payment|after \d+ (years?|months?|days?))\b", _I),
    "algebra": re.compile(
        r"\b(solve|equation|for [xyn]\b|[xyn]\s*[\^=]|integral|factorial|divisible|digits?|prime\b(?! number\?)|"
        r"next (number|term)|sum of (all|the first)|sequence|angle|area of|compound\w*|interest|per (year|month|annum)|"
        r"percent\w*|\d+\s*%)", _I),
    "proof": re.compile(
        r"\b(prove|proof (that|of why)|show that|demonstrate that|derive|by induction|"
        r"why (is|are|does|do|must|can't|cannot) (there|every|no|the sum|the product|any|all)|always (even|odd|divisible))\b",
        _I),
    "bug": re.compile(
        r"\b(bug\w*|wrong with|what'?s wrong|broken|doesn'?t work|does not work|never (ends|stops|finishes)|spot the|"
        r"off[- ]by[- ]one|overflow|crash\w*|returns? nothing|gives? (the )?wrong|why does (this|it|my|the)|why is my|"
        r"fix(es)?\b(?! the (spelling|grammar|typos?))|leaks?)\b", _I),
    "write_code": re.compile(
        r"\b(write|implement|code|build|create)\b[^.?!]{0,40}\b(function|script|regex|query|sql|class|program|"
        r"algorithm|one-liner|parser|cache)\b|\b(regex|sql|time complexity|big-?o|in place|linked list|recursive\w*|"
        r"algorithm)\b", _I),
    "judgement": re.compile(
        r"\b(can (he|she|they|my \w+|the \w+|i be|i sue|i still|i end|i leave)|am i (liable|allowed|entitled|owed|bound|"
        r"responsible|still)|is (it|that|this) (legal|lawful|illegal|allowed|safe|enforceable|binding|fair)|"
        r"liab\w+|sue\b|enforceable|binding|infring\w*|breach\w*|entitled|compensation|who pays|owed|"
        r"safe to (take|use|give|mix)|interact\w*|dosage|how urgent|should (i|he|she|we) (worry|see|stop|take|keep))\b",
        _I),
    "decision": re.compile(
        r"\b(should (i|we)|which (should|is (better|cheaper|best)|one should|would you)|better to|better (off|first)|"
        r"worth (it|buying|paying)|or (should|would|is it better)|pros and cons|trade-?offs?|weigh\b|"
        r"both sides|and why\b|which is cheaper|rent or buy|lease or buy|fixed or variable)\b", _I),
    "planning": re.compile(
        r"\b(plan|schedule|itinerary|route|day[- ]by[- ]day|in what order|best order|split|allocate|seat\w*|arrange|"
        r"budget of|on a \S+ budget|constraints?|so (that )?no|without (any|two))\b", _I),
    "explain_why": re.compile(
        r"\b(why|how (does|do|would|could)|explain|estimate|critique|is this (argument|reasoning) valid|"
        r"what (could|would) (cause|explain)|cause[sd]?|design|compare|analy[sz]e|evaluate|walk me through|"
        r"step[- ]by[- ]step|show (the|your) (steps|working|work))\b", _I),
}

# Easy cues: the request transforms or looks up, whatever its length or the words inside what it carries.
EASY = {
    "transform": re.compile(
        r"\b(translate|summari[sz]e|summary|tl;?dr|rephrase|rewrite|reword|shorten|paraphrase|proofread|"
        r"(correct|fix) (the )?(spelling|grammar|typos?)|capitali[sz]e|reformat|format (this|it|as)|convert (this|it|to)|"
        r"turn (this|these|it) into|put (these|this|them) (into|in)|make (this|it) (sound|more|less|friendlier|formal|"
        r"polite|shorter)|sort (these|this)|alphabeti\w*|extract|pull out|label each|classify|bullet points?|"
        r"in (one|two|three) (sentence|line|word)s?|one word|how do you say|in (french|spanish|german|italian|"
        r"japanese|polish|portuguese|english))\b", _I),
    "lookup": re.compile(
        r"^\s*(who (is|was|wrote|painted|invented|proved|discovered)|what (is|are|was|does|'s) (a|an|the)\b|"
        r"when (did|was|is)|where (is|was)|which (planet|country|city|language|vitamin)|define|meaning of|"
        r"what does \S+( \S+)? (mean|stand for|do)\b)", _I),
}


def _payload_share(text: str) -> float:
    """Share of the words that come after the instruction (after its first colon or opening quote): a long
    carried text under a short instruction is read or transformed, not reasoned about."""
    words = len(text.split()) or 1
    cut = min((i for i in (text.find(":"), text.find("'"), text.find('"'), text.find("\n")) if i >= 0), default=-1)
    if cut < 0:
        return 0.0
    return len(text[cut + 1 :].split()) / words


Feature = Callable[[str], float]

FEATURES: dict[str, Feature] = {
    **{name: (lambda pattern: lambda text: 1.0 if pattern.search(text) else 0.0)(p) for name, p in HARD.items()},
    **{f"easy_{name}": (lambda pattern: lambda text: 1.0 if pattern.search(text) else 0.0)(p) for name, p in EASY.items()},
    "numbers": lambda text: min(len(NUMBER.findall(text)), 6) / 6,
    "code": lambda text: min(len(CODE_TOKENS.findall(text)), 4) / 4,
    "words": lambda text: min(math.log1p(len(text.split())) / math.log1p(400), 1.0),
    "payload_share": _payload_share,
    "question_marks": lambda text: min(text.count("?"), 3) / 3,
}
FEATURE_NAMES = tuple(FEATURES)
HARD_NAMES = tuple(HARD)


def features(text: str) -> list[float]:
    """The cue vector of `text`, in FEATURE_NAMES order."""
    return [f(text) for f in FEATURES.values()]


def hard_cues(text: str) -> list[str]:
    """Names of the hard cues present in `text` (for the second stage and for explaining a decision)."""
    return [name for name, pattern in HARD.items() if pattern.search(text)]
