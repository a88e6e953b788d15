"""Chunking with the real all-MiniLM-L6-v2 tokenizer from the bundled model package."""

from __future__ import annotations

import base64
import itertools
import random
import time

import pytest

from core.errors import ConfigurationError
from rag.chunking import Chunker, HFTokenCounter, _sentence_spans, bundled_model_dir, bundled_token_counter
from rag.documents import ChunkText, DocType, ParsedDocument, Section
from rag.parsing import parse

MODEL_MAX_SEQ = 256


@pytest.fixture(scope="module")
def counter() -> HFTokenCounter:
    return bundled_token_counter()


# --- a varied corpus -------------------------------------------------------------------------------

WORDS = [
    "the",
    "model",
    "agent",
    "graph",
    "retrieval",
    "tenant",
    "vector",
    "query",
    "answer",
    "latency",
    "cache",
    "worker",
    "queue",
    "router",
    "orchestration",
    "embedding",
    "chunk",
    "document",
    "token",
    "budget",
    "overlap",
    "heading",
    "section",
    "paragraph",
    "sentence",
    "deterministic",
    "throughput",
    "configuration",
    "parameter",
    "observability",
    "trace",
    "span",
    "metric",
]


def sentence(rng: random.Random, lo: int = 4, hi: int = 24) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), rng.choice(["e.g.", "i.e.", "Dr. Who", "the U.S.", "3.14", "v2.0"]))
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"])


def prose(rng: random.Random, paragraphs: int, sentences: tuple[int, int] = (2, 12)) -> str:
    return "\n\n".join(" ".join(sentence(rng) for _ in range(rng.randint(*sentences))) for _ in range(paragraphs))


def corpus_markdown(seed: int = 7) -> str:
    rng = random.Random(seed)
    blob = base64.b64encode(rng.randbytes(3750)).decode()
    assert len(blob) == 5000
    long_heading = " ".join(rng.choice(WORDS) for _ in range(150))
    code = "\n".join(
        f"    result_{i} = compute(alpha={i}, beta='{rng.choice(WORDS)}')  # step {i}: {sentence(rng)}"
        for i in range(80)
    )
    short_lines = "\n".join(f"- item {i} {rng.choice(WORDS)}" for i in range(600))
    run_on = " ".join(rng.choice(WORDS) for _ in range(700))  # one sentence, no punctuation
    cjk = "".join(chr(rng.randint(0x4E00, 0x4FFF)) for _ in range(1500))  # no spaces at all
    return f"""Preface before any heading. {prose(rng, 2)}

# Corpus

{prose(rng, 12)}

## A blob

Before the blob: {blob} and after the blob. {sentence(rng)}

## {long_heading}

### {long_heading}

#### {long_heading}

{prose(rng, 4)}

## Many short lines

{short_lines}

## Code

{prose(rng, 1)}

```python
# a comment that is not a heading
{code}
```

{prose(rng, 1)}

## Run-on

{run_on}

## CJK

{cjk}

## Mixed

{prose(rng, 3, (1, 3))}
"""


@pytest.fixture(scope="module")
def corpus() -> ParsedDocument:
    return parse(corpus_markdown().encode(), DocType.MARKDOWN, fallback_title="corpus.md")


def by_section(doc: ParsedDocument, chunks: list[ChunkText]) -> list[tuple[Section, list[ChunkText]]]:
    """Chunks come section by section, in order: regroup them (no two adjacent sections share a path here)."""
    groups: list[tuple[tuple[str, ...], list[ChunkText]]] = []
    for chunk in chunks:
        if groups and groups[-1][0] == chunk.heading_path:
            groups[-1][1].append(chunk)
        else:
            groups.append((chunk.heading_path, [chunk]))
    sections = [section for section in doc.sections if section.text.strip()]
    assert [path for path, _ in groups] == [section.heading_path for section in sections]
    return [(section, group) for section, (_, group) in zip(sections, groups, strict=True)]


def locate(section_text: str, chunks: list[ChunkText]) -> list[tuple[int, int]]:
    """Where each chunk's text sits in its section: each is a substring, in order."""
    spans: list[tuple[int, int]] = []
    search_from = 0
    for chunk in chunks:
        start = section_text.find(chunk.text, search_from)
        assert start >= 0, f"chunk {chunk.index} is not a substring of its section after offset {search_from}"
        spans.append((start, start + len(chunk.text)))
        search_from = start + 1
    return spans


PARAMS = [(200, 32), (254, 0), (64, 16), (40, 39), (100, 50)]


# --- the limits hold ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), PARAMS)
def test_no_chunk_exceeds_the_model_limit(
    counter: HFTokenCounter, corpus: ParsedDocument, chunk_tokens: int, overlap_tokens: int
) -> None:
    chunks = Chunker(counter, chunk_tokens, overlap_tokens).chunk(corpus)
    assert len(chunks) > 20
    for chunk in chunks:
        assert chunk.token_count == counter.count(chunk.embed_text)
        assert chunk.token_count <= counter.max_tokens == 254
        with_special = len(counter.tokenizer.encode(chunk.embed_text, add_special_tokens=True).ids)
        assert with_special <= MODEL_MAX_SEQ
        assert chunk.text.strip() == chunk.text and chunk.text
        # chunk_tokens bounds the passage itself (within the rounding of pieces' counts)
        assert counter.count(chunk.text) <= chunk_tokens + 2


@pytest.mark.parametrize(("chunk_tokens", "overlap_tokens"), PARAMS)
def test_no_text_lost_and_chunks_stay_in_their_section(
    counter: HFTokenCounter, corpus: ParsedDocument, chunk_tokens: int, overlap_tokens: int
) -> None:
    chunks = Chunker(counter, chunk_tokens, overlap_tokens).chunk(corpus)
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for section, mine in by_section(corpus, chunks):
        assert mine, f"section {section.heading_path} produced no chunk"
        assert all(chunk.heading_path == section.heading_path for chunk in mine)
        spans = locate(section.text, mine)
        covered = bytearray(len(section.text))
        for start, end in spans:
            covered[start:end] = b"\x01" * (end - start)
        lost = [i for i, ch in enumerate(section.text) if not ch.isspace() and not covered[i]]
        assert not lost, f"text lost in {section.heading_path[-1:]}: {section.text[lost[0] : lost[0] + 40]!r}"
        for (start, end), (next_start, next_end) in itertools.pairwise(spans):
            assert start < next_start and end < next_end  # always moving forward
            if next_start < end:  # an overlap: the tail of one chunk starts the next
                overlap = section.text[next_start:end].strip()
                assert counter.count(overlap) <= overlap_tokens


def test_words_with_overlap_removed_are_the_sections_words(counter: HFTokenCounter, corpus: ParsedDocument) -> None:
    chunker = Chunker(counter, 120, 24)
    for section, mine in by_section(corpus, chunker.chunk(corpus)):
        spans = locate(section.text, mine)
        rebuilt, last_end = [], 0
        for start, end in spans:
            rebuilt.append(section.text[max(start, last_end) : end])
            last_end = end
        assert "".join(rebuilt).split() == section.text.split()


def test_overlap_present_in_prose(counter: HFTokenCounter) -> None:
    rng = random.Random(11)
    text = prose(rng, 30)
    doc = ParsedDocument("Prose", DocType.TEXT, [Section(("Only",), text)])
    for chunk_tokens, overlap_tokens in [(200, 32), (120, 20), (60, 30)]:
        chunks = Chunker(counter, chunk_tokens, overlap_tokens).chunk(doc)
        assert len(chunks) > 5
        spans = locate(text, chunks)
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start < end, "consecutive chunks of a section must overlap"
            overlap = text[next_start:end]
            assert 0 < counter.count(overlap) <= overlap_tokens
        # the overlap is cut at sentence or word boundaries
        for start, _ in spans[1:]:
            assert text[start - 1].isspace()


def test_no_overlap_when_zero(counter: HFTokenCounter) -> None:
    text = prose(random.Random(5), 20)
    chunks = Chunker(counter, 100, 0).chunk(ParsedDocument("P", DocType.TEXT, [Section((), text)]))
    spans = locate(text, chunks)
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start >= end


def test_chunks_fill_their_budget(counter: HFTokenCounter) -> None:
    text = prose(random.Random(3), 40)
    chunks = Chunker(counter, 200, 32).chunk(ParsedDocument("P", DocType.TEXT, [Section((), text)]))
    assert all(counter.count(chunk.text) >= 100 for chunk in chunks[:-1])


def test_huge_word_is_cut_to_fit(counter: HFTokenCounter) -> None:
    blob = base64.b64encode(random.Random(1).randbytes(3750)).decode()
    # not periodic, so that locate() finds each piece where it belongs
    url = "https://example.com/" + "/".join(f"seg{i}x{i * 7919 % 1000}" for i in range(600))
    doc = ParsedDocument("Blobs", DocType.TEXT, [Section(("B",), blob), Section(("U",), url)])
    chunks = Chunker(counter, 200, 32).chunk(doc)
    for section, mine in by_section(doc, chunks):
        rebuilt, last_end = "", 0
        for start, end in locate(section.text, mine):
            rebuilt += section.text[max(start, last_end) : end]
            last_end = end
        assert rebuilt == section.text
    assert all(counter.count(chunk.embed_text) <= counter.max_tokens for chunk in chunks)


def test_text_without_spaces_is_cut_and_overlaps(counter: HFTokenCounter) -> None:
    rng = random.Random(8)
    cjk = "".join(chr(rng.randint(0x4E00, 0x4FFF)) for _ in range(1200))
    blob = base64.b64encode(rng.randbytes(3000)).decode()
    doc = ParsedDocument("T", DocType.TEXT, [Section(("cjk",), cjk), Section(("blob",), blob)])
    chunks = Chunker(counter, 200, 32).chunk(doc)
    for section, mine in by_section(doc, chunks):
        assert len(mine) > 5
        spans = locate(section.text, mine)
        assert spans[0][0] == 0 and spans[-1][1] == len(section.text)
        for (_, end), (next_start, _) in itertools.pairwise(spans):
            assert next_start < end
            assert counter.count(section.text[next_start:end]) <= 32
        assert all(chunk.token_count <= counter.max_tokens for chunk in mine)


# --- the context header ------------------------------------------------------------------------------


def test_embed_text_header(counter: HFTokenCounter) -> None:
    doc = ParsedDocument(
        "My  Doc",
        DocType.MARKDOWN,
        [Section((), "No heading."), Section(("Part A", "Step 1"), "Nested.")],
    )
    first, second = Chunker(counter).chunk(doc)
    assert first.embed_text == "My Doc\n\nNo heading."
    assert second.embed_text == "My Doc\nPart A > Step 1\n\nNested."
    assert second.heading_path == ("Part A", "Step 1")
    assert second.text == "Nested."
    untitled = Chunker(counter).chunk(ParsedDocument("", DocType.TEXT, [Section(("H",), "x y"), Section((), "z")]))
    assert [chunk.embed_text for chunk in untitled] == ["H\n\nx y", "z"]


def test_a_top_heading_that_repeats_the_title_is_embedded_once(counter: HFTokenCounter) -> None:
    doc = ParsedDocument(
        "Guide", DocType.MARKDOWN, [Section(("Guide",), "Intro."), Section(("Guide", "Setup"), "Run.")]
    )
    intro, setup = Chunker(counter).chunk(doc)
    assert [intro.embed_text, setup.embed_text] == ["Guide\n\nIntro.", "Guide\nSetup\n\nRun."]
    assert setup.heading_path == ("Guide", "Setup")  # citations keep the whole path


def test_header_tokens_count_against_the_budget(counter: HFTokenCounter) -> None:
    heading = " ".join(WORDS[:20])  # ~25 tokens
    text = prose(random.Random(2), 10)
    doc = ParsedDocument("A title of some length", DocType.TEXT, [Section((heading, heading, heading), text)])
    chunks = Chunker(counter, 254, 0).chunk(doc)
    header_tokens = counter.count(chunks[0].embed_text.split("\n\n")[0])
    assert header_tokens > 60
    for chunk in chunks:
        assert counter.count(chunk.embed_text) <= 254
        assert counter.count(chunk.text) <= 254 - header_tokens


def test_very_long_heading_path_is_truncated(counter: HFTokenCounter) -> None:
    rng = random.Random(4)
    headings = tuple(f"level{level} " + " ".join(rng.choice(WORDS) for _ in range(200)) for level in range(3))
    text = prose(rng, 6)
    doc = ParsedDocument("T", DocType.MARKDOWN, [Section(headings, text)])
    chunks = Chunker(counter).chunk(doc)
    for chunk in chunks:
        assert chunk.heading_path == headings  # the section's own path is kept whole
        header = chunk.embed_text[: -len(chunk.text) - 2]
        assert header.startswith("T\nlevel2 ")  # the last heading kept, the first ones dropped
        assert "level0" not in header and "level1" not in header
        assert counter.count(chunk.embed_text) <= counter.max_tokens
    # the text keeps at least 32 tokens of budget
    assert all(counter.count(chunk.text) >= 20 for chunk in chunks[:-1])
    assert len(chunks) < 60


def test_very_long_title_is_truncated(counter: HFTokenCounter) -> None:
    title = " ".join(WORDS * 20)
    chunks = Chunker(counter).chunk(ParsedDocument(title, DocType.TEXT, [Section(("H",), prose(random.Random(9), 5))]))
    for chunk in chunks:
        assert counter.count(chunk.embed_text) <= counter.max_tokens
        assert chunk.embed_text.startswith("the model agent")


# --- sentences ---------------------------------------------------------------------------------------


def test_sentence_splitting() -> None:
    text = (
        "Dr. Smith moved to the U.S. in 2020. He paid 3.14 dollars, e.g. for tea, i.e. cheap! "
        'Was it J. R. R. Tolkien? "Yes," she said. 42 is the answer... Then silence. lower case. Next'
    )
    sentences = [text[a:b] for a, b in _sentence_spans(text, 0, len(text))]
    assert sentences == [
        "Dr. Smith moved to the U.S. in 2020.",
        "He paid 3.14 dollars, e.g. for tea, i.e. cheap!",
        "Was it J. R. R. Tolkien?",
        '"Yes," she said.',
        "42 is the answer...",
        "Then silence. lower case.",
        "Next",
    ]
    cjk = "\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002\u6211\u4eec\u53bb\u516c\u56ed\u5427\uff01\u597d\u7684\u3002"
    assert [cjk[a:b] for a, b in _sentence_spans(cjk, 0, len(cjk))] == [cjk[:7], cjk[7:14], cjk[14:]]


# --- other properties --------------------------------------------------------------------------------


def test_deterministic(counter: HFTokenCounter, corpus: ParsedDocument) -> None:
    assert Chunker(counter, 150, 30).chunk(corpus) == Chunker(counter, 150, 30).chunk(corpus)


def test_empty_sections_give_no_chunks(counter: HFTokenCounter) -> None:
    doc = ParsedDocument("T", DocType.TEXT, [Section(("A",), "  \n\n "), Section(("B",), "b")])
    chunks = Chunker(counter).chunk(doc)
    assert [(chunk.index, chunk.heading_path, chunk.text) for chunk in chunks] == [(0, ("B",), "b")]


@pytest.mark.parametrize(
    ("chunk_tokens", "overlap_tokens", "message"),
    [
        (0, 0, "chunk_tokens"),
        (200, 200, "overlap_tokens"),
        (200, 250, "overlap_tokens"),
        (200, -1, "overlap_tokens"),
        (255, 32, "254"),
    ],
)
def test_invalid_parameters_rejected(
    counter: HFTokenCounter, chunk_tokens: int, overlap_tokens: int, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Chunker(counter, chunk_tokens, overlap_tokens)


def test_token_counter(counter: HFTokenCounter) -> None:
    assert counter.max_tokens == 254
    long_text = "word " * 1000  # tokenizer.json truncates at 128 and pads: both must be off
    assert counter.count(long_text) == 1000
    assert counter.count("") == 0
    assert counter.count_many(["hello world", "", long_text]) == [2, 0, 1000]
    assert (bundled_model_dir() / "tokenizer.json").is_file()


def test_one_megabyte_markdown_is_fast(counter: HFTokenCounter) -> None:
    rng = random.Random(21)
    parts, size = [], 0
    while size < 1_000_000:
        part = f"## Heading {len(parts)}\n\n{prose(rng, 5)}\n\n```\ncode line\n# comment\n```\n"
        parts.append(part)
        size += len(part)
    doc = parse("\n".join(parts).encode(), DocType.MARKDOWN, fallback_title="big")
    started = time.perf_counter()
    chunks = Chunker(counter).chunk(doc)
    elapsed = time.perf_counter() - started
    assert len(chunks) > 1000
    assert max(chunk.token_count for chunk in chunks) <= counter.max_tokens
    assert elapsed < 8, f"chunking 1 MB took {elapsed:.1f}s"
