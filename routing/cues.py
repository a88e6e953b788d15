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
        r"\b(probabilit\w*|chances?|odds|expected (number|value)|at least one|dice|coins?|deck|cards?|"
        r"marbles?|without replacement|random(ly)?|shuffle\w*|lottery)\b",
        _I,
    ),
    "quantity_question": re.compile(
        r"\b(how (many|long|much|far|fast|old)|what (fraction|percentage|share)|in how many|how many ways|"
        r"at (most|least)|cheapest|fastest|shortest|minimum|maximum|catch up|break even|"
        r"average speed|total (cost|discount|time)|monthly payment|after \d+ (years?|months?|days?))\b",
        _I,
    ),
    "algebra": re.compile(
        r"\b(solve|equation|for [xyn]\b|[xyn]\s*[\^=]|integral|factorial|divisible|digits?|prime\b(?! number\?)|"
        r"next (number|term)|sum of (all|the first)|sequence|angle|area of|compound\w*|interest|per (year|month|annum)|"
        r"percent\w*|\d+\s*%)",
        _I,
    ),
    "proof": re.compile(
        r"\b(prove|proof (that|of why)|show that|demonstrate that|derive|by induction|"
        r"why (is|are|does|do|must|can't|cannot) (there|every|no|the sum|the product|any|all)|"
        r"always (even|odd|divisible))\b",
        _I,
    ),
    "bug": re.compile(
        r"\b(bug\w*|wrong with|what'?s wrong|broken|doesn'?t work|does not work|never (ends|stops|finishes)|spot the|"
        r"off[- ]by[- ]one|overflow|crash\w*|returns? nothing|gives? (the )?wrong|why does (this|it|my|the)|why is my|"
        r"fix(es)?\b(?! (the |only )?(spelling|grammar|typos?|punctuation))|leaks?|errors? out|"
        r"(result|output|answer|total|it) (is|comes out|gives?|returns?) (sometimes |always |often )?"
        r"(too|wrong|incorrect|off))\b",
        _I,
    ),
    "write_code": re.compile(
        r"\b(write|implement|code|build|create)\b[^.?!]{0,40}\b(function|script|regex|query|sql|class|program|"
        r"algorithm|one-liner|parser|cache)\b|\b(regex|sql|time complexity|big-?o|in place|linked list|recursive\w*|"
        r"algorithm)\b",
        _I,
    ),
    "judgement": re.compile(
        r"\b(can (he|she|they|my \w+|the \w+|i be|i sue|i still|i end|i leave)|"
        r"am i (liable|allowed|entitled|owed|bound|"
        r"responsible|still)|is (it|that|this) (legal|lawful|illegal|allowed|safe|enforceable|binding|fair)|"
        r"liab\w+|sue\b|enforceable|binding|infring\w*|breach\w*|entitled|compensation|who pays|owed|"
        r"(is|was|are) (he|she|they|it|that|this) right|safe to (take|use|give|mix)|interact\w*|dosage|how urgent|"
        r"should (i|he|she|we) (worry|see|stop|take|keep))\b",
        _I,
    ),
    "decision": re.compile(
        r"\b(should (i|we)|which (should|is (better|cheaper|best)|one should|would you)|better to|better (off|first)|"
        r"worth (it|buying|paying)|or (should|would|is it better)|pros and cons|trade-?offs?|weigh\b|"
        r"both sides|and why\b|which is cheaper|rent or buy|lease or buy|fixed or variable)\b",
        _I,
    ),
    "planning": re.compile(
        r"\b(plan|schedule|itinerary|route|day[- ]by[- ]day|in what order|best order|split|allocate|seat\w*|arrange|"
        r"budget of|on a \S+ budget|constraints?|so (that )?no|without (any|two))\b",
        _I,
    ),
    "explain_why": re.compile(
        r"\b(why|how (does|do|would|could)|explain|estimate|critique|is this (argument|reasoning) valid|"
        r"what (could|would) (cause|explain)|cause[sd]?|design|compare|analy[sz]e|evaluate|walk me through|"
        r"step[- ]by[- ]step|show (the|your) (steps|working|work))\b",
        _I,
    ),
}

# Easy cues: the request transforms or looks up, whatever its length or the words inside what it carries.
EASY = {
    "transform": re.compile(
        r"\b(translate|summari[sz]e|summary|tl;?dr|rephrase|rewrite|reword|shorten|paraphrase|proofread|"
        r"(correct|fix) (the )?(spelling|grammar|typos?)|capitali[sz]e|reformat|format (this|it|as)|"
        r"convert (this|it|to)|"
        r"turn (this|these|it) into|put (these|this|them) (into|in)|make (this|it) (sound|more|less|friendlier|formal|"
        r"polite|shorter)|sort (these|this)|alphabeti\w*|extract|pull out|label each|classify|bullet points?|"
        r"in (one|two|three) (sentence|line|word)s?|one word|how do you say|in (french|spanish|german|italian|"
        r"japanese|polish|portuguese|english))\b",
        _I,
    ),
    "lookup": re.compile(
        r"^\s*(who (is|was|wrote|painted|invented|proved|discovered)|what (is|are|was|does|'s) (a|an|the)\b|"
        r"when (did|was|is)|where (is|was)|which (planet|country|city|language|vitamin)|define|meaning of|"
        r"what does \S+( \S+)? (mean|stand for|do)\b)",
        _I,
    ),
}


# Where a carried text starts: a colon, an opening quote (not an apostrophe), a line break or a code fence.
PAYLOAD_START = re.compile(r""":\s|(?:^|(?<=[\s(]))['"\u201c\u2018]|\n|```""")
PAYLOAD_MIN_WORDS = 12
REFERS_BACK = re.compile(r"\b(it|this|that|one|ones|them|these|those|same|other|before|again)\b", _I)


def split_instruction(text: str) -> tuple[str, str]:
    """(instruction, carried text). A request that carries a text (after a colon, in quotes, after a line break)
    asks its question in the instruction: cues are read there, so the words of a carried lease or recipe do
    not pass for the request's own. No carried text of PAYLOAD_MIN_WORDS words: all of it is the instruction."""
    match = PAYLOAD_START.search(text)
    if match is None or len(text[match.end() :].split()) < PAYLOAD_MIN_WORDS:
        return text, ""
    return text[: match.start()], text[match.end() :]


def _underspecified(text: str) -> float:
    """A few words that point back at something not given ("Make it better.", "Is it worth it?"): the request
    needs a clarifying question or context the small model will guess at."""
    words = text.split()
    return 1.0 if len(words) <= 8 and REFERS_BACK.search(text) and not NUMBER.search(text) and ":" not in text else 0.0


def _payload_share(text: str, payload: str) -> float:
    return len(payload.split()) / max(len(text.split()), 1)


# Cues of the whole text (the pattern cues above read the instruction alone).
WHOLE_TEXT: dict[str, Callable[[str, str], float]] = {
    "underspecified": lambda text, payload: _underspecified(text),
    "numbers": lambda text, payload: min(len(NUMBER.findall(text)), 6) / 6,
    "code": lambda text, payload: min(len(CODE_TOKENS.findall(text)), 4) / 4,
    "words": lambda text, payload: min(math.log1p(len(text.split())) / math.log1p(400), 1.0),
    "payload_share": _payload_share,
    "question_marks": lambda text, payload: min(text.count("?"), 3) / 3,
}
PATTERNS = {**HARD, **{f"easy_{name}": pattern for name, pattern in EASY.items()}}
FEATURE_NAMES = (*PATTERNS, *WHOLE_TEXT)
HARD_NAMES = tuple(HARD)


def features(text: str) -> list[float]:
    """The cue vector of `text`, in FEATURE_NAMES order."""
    instruction, payload = split_instruction(text)
    found = [1.0 if pattern.search(instruction) else 0.0 for pattern in PATTERNS.values()]
    return found + [cue(text, payload) for cue in WHOLE_TEXT.values()]


def hard_cues(text: str) -> list[str]:
    """Names of the hard cues in `text`'s instruction, "explain_why" left out: it is the one broad enough to be in
    many simple requests ("Explain feature flags in a sentence"), so it weighs in the classifier but cannot by
    itself send a request large in the router's second stage."""
    instruction = split_instruction(text)[0]
    return [name for name, pattern in HARD.items() if name != "explain_why" and pattern.search(instruction)]
