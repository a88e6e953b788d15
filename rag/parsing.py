"""Raw bytes in, `ParsedDocument` out: type detection and parsers for text, Markdown, HTML and PDF.

Every parser returns sections whose text is normalised the same way (`normalise_text`): `\\n` line
ends, no trailing whitespace on lines, at most one blank line in a row. Paragraphs stay separated
by one blank line, which is what the chunker splits on first.
"""

from __future__ import annotations

import codecs
import io
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import PurePosixPath
from typing import assert_never

from core.errors import ConfigurationError, InvalidInputError
from rag.documents import DocType, ParsedDocument, Section

_MEDIA_TYPES: dict[str, DocType] = {
    "text/plain": DocType.TEXT,
    "text/markdown": DocType.MARKDOWN,
    "text/x-markdown": DocType.MARKDOWN,
    "text/html": DocType.HTML,
    "application/xhtml+xml": DocType.HTML,
    "application/pdf": DocType.PDF,
}
# Media types that say nothing about the content: decide by the file name, then by the bytes.
_GENERIC_MEDIA_TYPES = frozenset({"application/octet-stream", "binary/octet-stream", "application/unknown"})
_EXTENSIONS: dict[str, DocType] = {
    ".txt": DocType.TEXT,
    ".text": DocType.TEXT,
    ".md": DocType.MARKDOWN,
    ".markdown": DocType.MARKDOWN,
    ".html": DocType.HTML,
    ".htm": DocType.HTML,
    ".pdf": DocType.PDF,
}
_SUPPORTED = (
    "text (.txt, .text; text/plain), Markdown (.md, .markdown; text/markdown), "
    "HTML (.html, .htm; text/html) and PDF (.pdf; application/pdf)"
)
# Magic numbers of common formats we refuse, to name them in the error.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"PK\x03\x04", "ZIP archive (e.g. .docx, .xlsx, .odt)"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "legacy Office document (.doc, .xls, .ppt)"),
    (b"{\\rtf", "RTF document"),
    (b"\x1f\x8b", "gzip archive"),
    (b"\x7fELF", "ELF executable"),
)
_UTF8_BOM = codecs.BOM_UTF8

# C0 control characters other than tab and newline (form feed and vertical tab become newlines).
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")
_MANY_BLANK_LINES = re.compile(r"\n{3,}")
_WHITESPACE = re.compile(r"\s+")


def detect_type(filename: str | None, media_type: str | None, content: bytes) -> DocType:
    """Decide the document type: by media type, else by file extension, else by sniffing the bytes.

    A declared media type or extension that is not supported is refused rather than guessed around;
    generic media types (application/octet-stream) defer to the file name and the content.
    """
    mt = (media_type or "").split(";", 1)[0].strip().lower()
    ext = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    if mt and mt not in _GENERIC_MEDIA_TYPES:
        doc_type = _MEDIA_TYPES.get(mt)
        if doc_type is None:
            raise InvalidInputError(f"unsupported document type {mt!r}; supported: {_SUPPORTED}")
        # Many clients send text/plain for any text file: the extension is more precise then.
        if doc_type is DocType.TEXT and _EXTENSIONS.get(ext) is DocType.MARKDOWN:
            return DocType.MARKDOWN
        return doc_type
    if ext:
        doc_type = _EXTENSIONS.get(ext)
        if doc_type is None:
            raise InvalidInputError(f"unsupported document type {ext!r} ({filename}); supported: {_SUPPORTED}")
        return doc_type
    sniffed = _sniff(content)
    if sniffed is not None:
        return sniffed
    what = next((name for magic, name in _MAGIC if content.startswith(magic)), "binary content")
    raise InvalidInputError(f"unsupported document type: {what}; supported: {_SUPPORTED}")


def _sniff(content: bytes) -> DocType | None:
    if b"%PDF-" in content[:1024]:
        return DocType.PDF
    head = content.removeprefix(_UTF8_BOM)[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        return DocType.HTML
    if any(content.startswith(magic) for magic, _ in _MAGIC):
        return None
    try:
        text = content.removeprefix(_UTF8_BOM).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in text or len(_CONTROL_CHARS.findall(text[:4096])) > 8:
        return None
    return DocType.TEXT


def check_readable(content: bytes, doc_type: DocType) -> None:
    """What can be told of `content` without parsing it (the servers check this; only workers parse
    untrusted documents): text decodes in its encoding, a PDF starts like one. InvalidInputError if not."""
    if doc_type is DocType.TEXT or doc_type is DocType.MARKDOWN:
        _decode_utf8(content)
    elif doc_type is DocType.HTML:
        _decode_html(content)
    elif doc_type is DocType.PDF:
        if b"%PDF-" not in content[:1024]:
            raise InvalidInputError("not a PDF: no %PDF- header in its first 1024 bytes")
    else:
        assert_never(doc_type)


def parse(content: bytes, doc_type: DocType, *, fallback_title: str) -> ParsedDocument:
    """Parse `content` as `doc_type`; raise InvalidInputError for anything unreadable or empty."""
    if doc_type is DocType.TEXT:
        title, sections = fallback_title, [Section((), normalise_text(_decode_utf8(content)))]
    elif doc_type is DocType.MARKDOWN:
        title, sections = _parse_markdown(_decode_utf8(content), fallback_title)
    elif doc_type is DocType.HTML:
        title, sections = _parse_html(content, fallback_title)
    elif doc_type is DocType.PDF:
        title, sections = _parse_pdf(content, fallback_title)
    else:
        assert_never(doc_type)
    sections = [section for section in sections if section.text.strip()]
    if not sections:
        raise InvalidInputError(f"document is empty: the {doc_type.value} document contains no text")
    title = _collapse(title) or _collapse(fallback_title)
    return ParsedDocument(title=title, doc_type=doc_type, sections=sections)


def normalise_text(text: str) -> str:
    """`\\r\\n` and `\\r` to `\\n`, drop control characters, strip trailing whitespace on every line,
    collapse runs of blank lines into one, and drop blank lines at both ends."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\f", "\n").replace("\v", "\n")
    text = _CONTROL_CHARS.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return _MANY_BLANK_LINES.sub("\n\n", text).strip("\n")


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def _decode_utf8(content: bytes) -> str:
    skipped = len(_UTF8_BOM) if content.startswith(_UTF8_BOM) else 0
    try:
        return content[skipped:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"document is not valid UTF-8: undecodable byte at offset {exc.start + skipped}; "
            "save it as UTF-8 and upload it again"
        ) from exc


# --- Markdown -------------------------------------------------------------------------------------

_ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_OPEN = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")


def _parse_markdown(text: str, fallback_title: str) -> tuple[str, list[Section]]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    builder = _SectionBuilder()
    title: str | None = None
    fence: str | None = None  # the opening fence while inside a fenced code block
    for line in lines:
        if fence is not None:
            builder.add_line(line)
            stripped = line.strip()
            if len(line) - len(line.lstrip(" ")) <= 3 and stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = None
            continue
        opening = _FENCE_OPEN.match(line)
        if opening and not (opening.group(1)[0] == "`" and "`" in opening.group(2)):
            fence = opening.group(1)
            builder.add_line(line)
            continue
        heading = _ATX_HEADING.match(line)
        if heading:
            level, heading_text = len(heading.group(1)), _collapse(heading.group(2) or "")
            if heading_text:
                if level == 1 and title is None:
                    title = heading_text
                builder.heading(level, heading_text)
            continue
        builder.add_line(line)
    return title or fallback_title, builder.sections()


@dataclass
class _SectionBuilder:
    """Collects text under a heading stack; a heading closes the current section."""

    _stack: list[tuple[int, str]] = field(default_factory=list)
    _done: list[Section] = field(default_factory=list)
    _current: list[str] = field(default_factory=list)

    def path(self) -> tuple[str, ...]:
        return tuple(text for _, text in self._stack)

    def add_line(self, line: str) -> None:
        self._current.append(line)

    def heading(self, level: int, text: str) -> None:
        self._close()
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))

    def _close(self) -> None:
        body = normalise_text("\n".join(self._current))
        if body.strip():
            self._done.append(Section(self.path(), body))
        self._current = []

    def sections(self) -> list[Section]:
        self._close()
        return self._done


# --- HTML -----------------------------------------------------------------------------------------

_HTML_SKIP = frozenset({"script", "style", "nav", "noscript", "template", "svg"})
# Page banners and footers are junk; an <article>'s or <section>'s own header (its title) is not.
_HTML_SKIP_OUTSIDE_CONTENT = frozenset({"header", "footer"})
# ARIA landmarks that are never the page's content (menus, sidebars, search boxes, site banners and footers):
# many sites mark them on plain <div>s rather than <nav>/<header>/<footer>.
_HTML_SKIP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo"})
_HTML_CONTENT = frozenset({"article", "main", "section"})
_HTML_BLOCKS = frozenset(
    {
        "p", "div", "li", "br", "tr", "pre", "blockquote", "section", "article", "main", "aside",
        "ul", "ol", "dl", "dt", "dd", "table", "thead", "tbody", "tfoot", "caption", "hr",
        "figure", "figcaption", "form", "fieldset", "address", "details", "summary", "body",
    }
)  # fmt: skip
_HTML_CELLS = frozenset({"td", "th"})
_HTML_HEADINGS = {f"h{n}": n for n in range(1, 7)}
_META_CHARSET = re.compile(rb"""<meta[^>]*?charset\s*=\s*["']?\s*([A-Za-z0-9._:-]+)""", re.IGNORECASE)
_HAS_MAIN = re.compile(r"""<main[\s>]|\srole\s*=\s*["']?main\b""", re.IGNORECASE)
_PERMALINK_MARKS = "\u00b6\u00a7"  # the pilcrow and section sign that documentation generators put after headings
# WHATWG: these labels mean windows-1252; a UTF-16 label in a meta tag means UTF-8.
_HTML_LABEL_ALIASES = {"ascii": "cp1252", "latin_1": "cp1252", "iso8859-1": "cp1252", "cp1252": "cp1252"}


def _decode_html(content: bytes) -> str:
    if content.startswith(_UTF8_BOM):
        return _decode_utf8(content)
    if content.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        encoding = "utf-16"
    else:
        match = _META_CHARSET.search(content[:4096])
        encoding = "utf-8"
        if match:
            label = match.group(1).decode("ascii").lower()
            try:
                name = codecs.lookup(label).name
            except LookupError:
                name = "utf-8"  # an unknown label: UTF-8 is by far the likeliest
            name = _HTML_LABEL_ALIASES.get(name, name)
            encoding = "utf-8" if name.startswith(("utf-16", "utf-32")) else name
    if encoding == "utf-8":
        return _decode_utf8(content)
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as exc:
        if encoding == "cp1252":  # the 5 bytes windows-1252 leaves undefined: read as Latin-1
            return content.decode("latin-1")
        raise InvalidInputError(
            f"HTML document is not valid {encoding} (its declared charset): undecodable byte at offset {exc.start}"
        ) from exc


class _Region:
    """An element whose whole subtree is being tracked (skipped, or the page's main content): open while
    its tag, counted through nested elements of the same name, has not closed."""

    def __init__(self) -> None:
        self.tag: str | None = None
        self.depth = 0

    def open(self, tag: str) -> None:
        self.tag, self.depth = tag, 1

    def start(self, tag: str) -> None:
        if tag == self.tag:
            self.depth += 1

    def end(self, tag: str) -> None:
        if tag == self.tag:
            self.depth -= 1
            if self.depth == 0:
                self.tag = None

    def __bool__(self) -> bool:
        return self.tag is not None


class _HTMLExtractor(HTMLParser):
    def __init__(self, main_only: bool) -> None:
        super().__init__(convert_charrefs=True)
        self.title: str | None = None
        self.first_h1: str | None = None
        self.builder = _SectionBuilder()
        self._skip = _Region()  # an element whose content we drop
        self._main_only = main_only  # the page marks its main content: keep only that
        self._main = _Region()
        self._content_depth = 0  # open <article>/<main>/<section>
        self._pre_depth = 0
        self._in_title = False
        self._title_parts: list[str] = []
        self._heading: tuple[int, list[str]] | None = None
        self._para: list[str] = []
        self._para_pre = False

    # Paragraph handling: a block boundary ends the paragraph being collected.
    def _flush(self) -> None:
        raw = "".join(self._para)
        text = "\n".join(line.rstrip() for line in raw.split("\n")).strip("\n") if self._para_pre else _collapse(raw)
        text = text.rstrip(_PERMALINK_MARKS).rstrip()
        if text.strip():
            self.builder.add_line(text)
            self.builder.add_line("")
        self._para = []
        self._para_pre = self._pre_depth > 0

    def _finish_heading(self) -> None:
        if self._heading is None:
            return
        level, parts = self._heading
        self._heading = None
        text = _collapse("".join(parts)).rstrip(_PERMALINK_MARKS).rstrip()
        if not text:
            return
        if level == 1 and self.first_h1 is None:
            self.first_h1 = text
        self.builder.heading(level, text)

    def _is_junk(self, tag: str, role: str | None) -> bool:
        if tag in _HTML_SKIP_OUTSIDE_CONTENT:
            return self._content_depth == 0
        return tag in _HTML_SKIP or role in _HTML_SKIP_ROLES

    def _track_main(self, tag: str, role: str | None) -> None:
        if self._main:
            self._main.start(tag)
        elif tag == "main" or role == "main":
            self._main.open(tag)

    def _dropping(self) -> bool:
        return bool(self._skip) or (self._main_only and not self._main)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _HTML_CONTENT:
            self._content_depth += 1
        if self._skip:
            self._skip.start(tag)
            return
        role = next((value for name, value in attrs if name == "role"), None)
        if self._is_junk(tag, role):
            self._skip.open(tag)
            return
        if tag == "title":
            self._in_title = self.title is None
            return
        self._track_main(tag, role)
        if self._dropping():
            return
        if tag in _HTML_HEADINGS:
            self._flush()
            self._finish_heading()
            self._heading = (_HTML_HEADINGS[tag], [])
            return
        if self._heading is not None:
            if tag in _HTML_BLOCKS or tag in _HTML_CELLS:
                self._heading[1].append(" ")
            return
        if tag in _HTML_BLOCKS:
            self._flush()
            if tag == "pre":
                self._pre_depth += 1
                self._para_pre = True
        elif tag in _HTML_CELLS:
            self._para.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _HTML_CONTENT and self._content_depth:
            self._content_depth -= 1
        if self._skip:
            self._skip.end(tag)
            return
        if tag == "title":
            if self._in_title:
                self.title = _collapse("".join(self._title_parts))
            self._in_title = False
            return
        dropping = self._dropping()
        if self._main:
            self._main.end(tag)
        if dropping:
            return
        if tag in _HTML_HEADINGS:
            self._finish_heading()
        elif tag in _HTML_BLOCKS and self._heading is None:
            self._flush()
            if tag == "pre" and self._pre_depth:
                self._pre_depth -= 1
                self._para_pre = self._pre_depth > 0

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self._title_parts.append(data)
        elif self._dropping():
            return
        elif self._heading is not None:
            self._heading[1].append(data)
        else:
            self._para.append(data)

    def result(self) -> list[Section]:
        self._finish_heading()
        self._flush()
        return self.builder.sections()


def _parse_html(content: bytes, fallback_title: str) -> tuple[str, list[Section]]:
    text = _decode_html(content).replace("\r\n", "\n").replace("\r", "\n")
    extractor = _HTMLExtractor(main_only=_HAS_MAIN.search(text) is not None)
    extractor.feed(text)
    extractor.close()
    sections = extractor.result()
    title, h1 = extractor.title, extractor.first_h1
    if title and h1 and len(title) > len(h1) and title.startswith(h1):
        title = h1  # "Page - Site name": the site's name, on every page, says nothing about this one
    return title or h1 or fallback_title, sections


# --- PDF ------------------------------------------------------------------------------------------


def _parse_pdf(content: bytes, fallback_title: str) -> tuple[str, list[Section]]:
    try:
        from pypdf import PdfReader
    except ImportError as exc:
        raise ConfigurationError("reading PDF documents needs the 'pypdf' package; install it") from exc
    try:
        reader = PdfReader(io.BytesIO(content))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidInputError("could not read PDF: it is encrypted with a password; upload it unencrypted")
        pages = [normalise_text(page.extract_text() or "") for page in reader.pages]
        metadata = reader.metadata
        title = str(metadata.title or "") if metadata is not None else ""
    except InvalidInputError:
        raise
    except Exception as exc:  # pypdf raises many exception types on corrupt input
        raise InvalidInputError(f"could not read PDF: {type(exc).__name__}: {exc}") from exc
    if not pages:
        raise InvalidInputError("could not read PDF: it has no pages")
    if not any(page.strip() for page in pages):
        raise InvalidInputError(
            f"PDF has no text layer ({len(pages)} page(s), no extractable text): "
            "is it a scanned document? Run OCR on it first"
        )
    text = "\n\n".join(page for page in pages if page.strip())
    return _collapse(title) or fallback_title, [Section((), text)]
