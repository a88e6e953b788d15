"""Parsing: type detection and the text, Markdown, HTML and PDF parsers, on real bytes."""

from __future__ import annotations

import io

import pytest

from core.errors import InvalidInputError
from rag.documents import DocType, Section
from rag.parsing import detect_type, normalise_text, parse

# --- a hand-made PDF with a real text layer --------------------------------------------------------


def make_pdf(page_streams: list[bytes], title: str | None = None) -> bytes:
    """A minimal valid PDF: one page per content stream, Helvetica as /F1, a correct xref table."""
    n_pages = len(page_streams)
    font_id = 3 + 2 * n_pages
    info_id = font_id + 1
    page_ids = [3 + 2 * i for i in range(n_pages)]
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % pid for pid in page_ids) + b"] /Count %d >>" % n_pages,
        font_id: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    }
    for page_id, stream in zip(page_ids, page_streams, strict=True):
        objects[page_id] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] "
            b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>" % (font_id, page_id + 1)
        )
        objects[page_id + 1] = b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream"
    if title is not None:
        objects[info_id] = b"<< /Title (" + title.encode("latin-1") + b") >>"
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for obj_id in sorted(objects):
        offsets[obj_id] = len(out)
        out += b"%d 0 obj\n" % obj_id + objects[obj_id] + b"\nendobj\n"
    size = max(objects) + 1
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % size
    for obj_id in range(1, size):
        out += b"%010d 00000 n \n" % offsets[obj_id] if obj_id in offsets else b"0000000000 65535 f \n"
    info = b" /Info %d 0 R" % info_id if title is not None else b""
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\nstartxref\n%d\n%%%%EOF\n" % (size, info, xref_at)
    return bytes(out)


def text_stream(*lines: str) -> bytes:
    ops = [b"BT /F1 12 Tf 72 712 Td 14 TL"]
    for line in lines:
        ops.append(b"(" + line.encode("latin-1") + b") Tj T*")
    ops.append(b"ET")
    return b"\n".join(ops)


# --- detect_type -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("media_type", "expected"),
    [
        ("text/plain", DocType.TEXT),
        ("text/markdown", DocType.MARKDOWN),
        ("text/x-markdown", DocType.MARKDOWN),
        ("text/html; charset=utf-8", DocType.HTML),
        ("application/pdf", DocType.PDF),
        ("TEXT/HTML", DocType.HTML),
    ],
)
def test_detect_type_by_media_type(media_type: str, expected: DocType) -> None:
    assert detect_type("whatever.bin", media_type, b"hello") is expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("notes.txt", DocType.TEXT),
        ("notes.TEXT", DocType.TEXT),
        ("README.md", DocType.MARKDOWN),
        ("guide.markdown", DocType.MARKDOWN),
        ("page.html", DocType.HTML),
        ("dir/page.HTM", DocType.HTML),
        ("paper.pdf", DocType.PDF),
    ],
)
def test_detect_type_by_extension(filename: str, expected: DocType) -> None:
    assert detect_type(filename, None, b"hello") is expected
    assert detect_type(filename, "application/octet-stream", b"hello") is expected


def test_text_plain_media_type_with_markdown_extension_is_markdown() -> None:
    assert detect_type("README.md", "text/plain", b"# Hi") is DocType.MARKDOWN


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (make_pdf([text_stream("x")]), DocType.PDF),
        (b"  <!DOCTYPE html><html><body>x</body></html>", DocType.HTML),
        (b"\xef\xbb\xbf<html><body>x</body></html>", DocType.HTML),
        (b"<HTML><body>x</body></HTML>", DocType.HTML),
        ("Plain words, caf\u00e9.\n".encode(), DocType.TEXT),
        (b"# Looks like markdown but is sniffed as text", DocType.TEXT),
    ],
)
def test_detect_type_by_sniffing(content: bytes, expected: DocType) -> None:
    assert detect_type(None, None, content) is expected
    assert detect_type("upload", "", content) is expected


def test_detect_type_rejects_unsupported_media_type() -> None:
    with pytest.raises(InvalidInputError) as err:
        detect_type("photo.png", "image/png", b"\x89PNG\r\n\x1a\n....")
    assert "image/png" in str(err.value)
    assert "text/markdown" in str(err.value)  # the supported types are listed


def test_detect_type_rejects_unsupported_extension() -> None:
    docx = b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00word/document.xml"
    with pytest.raises(InvalidInputError) as err:
        detect_type("report.docx", None, docx)
    assert ".docx" in str(err.value)
    assert "PDF" in str(err.value)


@pytest.mark.parametrize(
    ("content", "named"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"PK\x03\x04\x14\x00\x06\x00", "ZIP"),
        (b"\x00\x01\x02\xff\xfe\x00binary", "binary"),
    ],
)
def test_detect_type_rejects_unsupported_content(content: bytes, named: str) -> None:
    with pytest.raises(InvalidInputError) as err:
        detect_type(None, None, content)
    assert named in str(err.value)
    assert "supported" in str(err.value)


# --- text --------------------------------------------------------------------------------------------


def test_text_one_section_paragraphs_kept() -> None:
    doc = parse(b"First paragraph\nstill first.\n\n\n\n\nSecond paragraph.  \n", DocType.TEXT, fallback_title="notes")
    assert doc.title == "notes"
    assert doc.doc_type is DocType.TEXT
    assert doc.sections == [Section((), "First paragraph\nstill first.\n\nSecond paragraph.")]


def test_text_bom_and_crlf() -> None:
    doc = parse(b"\xef\xbb\xbfLine one\r\nLine two \r\n\r\nPara two\r\n", DocType.TEXT, fallback_title="t")
    assert doc.sections[0].text == "Line one\nLine two\n\nPara two"


def test_text_invalid_utf8_names_offset() -> None:
    with pytest.raises(InvalidInputError) as err:
        parse(b"good text \xff\xfe more", DocType.TEXT, fallback_title="t")
    assert "not valid UTF-8" in str(err.value)
    assert "offset 10" in str(err.value)


def test_text_invalid_utf8_offset_counts_the_bom() -> None:
    with pytest.raises(InvalidInputError) as err:
        parse(b"\xef\xbb\xbfab\xc3", DocType.TEXT, fallback_title="t")
    assert "offset 5" in str(err.value)


@pytest.mark.parametrize("content", [b"", b"   \n\n\t \r\n  ", b"\xef\xbb\xbf\n"])
def test_empty_text_rejected(content: bytes) -> None:
    with pytest.raises(InvalidInputError, match="document is empty"):
        parse(content, DocType.TEXT, fallback_title="t")


def test_normalise_text() -> None:
    assert normalise_text("\n\na  \r\nb\t\r\n\r\n\r\n\r\nc\x00d\n\n") == "a\nb\n\ncd"


# --- markdown ----------------------------------------------------------------------------------------

MARKDOWN = """Preface line.

# Guide

Intro to the guide.

## Install

Install text.

### On Linux

```bash
# this is a comment, not a heading
apt install thing
```

~~~
## also not a heading
~~~

Linux text.

### On macOS ###

Mac text.

## Use

Use text.

#hashtag is not a heading

# Appendix

Appendix text.
"""


def test_markdown_heading_paths() -> None:
    doc = parse(MARKDOWN.encode(), DocType.MARKDOWN, fallback_title="fallback")
    assert doc.title == "Guide"
    paths = [section.heading_path for section in doc.sections]
    assert paths == [
        (),
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "On Linux"),
        ("Guide", "Install", "On macOS"),
        ("Guide", "Use"),
        ("Appendix",),
    ]
    texts = {section.heading_path: section.text for section in doc.sections}
    assert texts[()] == "Preface line."
    linux = texts[("Guide", "Install", "On Linux")]
    assert "# this is a comment, not a heading" in linux
    assert "## also not a heading" in linux
    assert linux.startswith("```bash") and linux.endswith("Linux text.")
    assert texts[("Guide", "Use")] == "Use text.\n\n#hashtag is not a heading"


def test_markdown_title_falls_back_without_level_one_heading() -> None:
    doc = parse(b"## Only a second level\n\ntext\n", DocType.MARKDOWN, fallback_title="file stem")
    assert doc.title == "file stem"
    assert doc.sections == [Section(("Only a second level",), "text")]


def test_markdown_skipped_level_and_going_back_up() -> None:
    doc = parse(b"# A\n\n### C\n\nc\n\n## B\n\nb\n", DocType.MARKDOWN, fallback_title="t")
    assert [s.heading_path for s in doc.sections] == [("A", "C"), ("A", "B")]


def test_markdown_unclosed_fence_runs_to_the_end() -> None:
    doc = parse(b"# A\n\n```\n# not a heading\n", DocType.MARKDOWN, fallback_title="t")
    assert doc.sections == [Section(("A",), "```\n# not a heading")]


def test_markdown_crlf_and_bom() -> None:
    doc = parse(b"\xef\xbb\xbf# Title\r\n\r\nBody line   \r\n", DocType.MARKDOWN, fallback_title="t")
    assert doc.title == "Title"
    assert doc.sections == [Section(("Title",), "Body line")]


def test_markdown_only_headings_is_empty() -> None:
    with pytest.raises(InvalidInputError, match="document is empty"):
        parse(b"# Title\n\n## Sub\n\n   \n", DocType.MARKDOWN, fallback_title="t")


def test_markdown_invalid_utf8() -> None:
    with pytest.raises(InvalidInputError, match=r"not valid UTF-8.*offset 4"):
        parse(b"# A\n\x80", DocType.MARKDOWN, fallback_title="t")


# --- html --------------------------------------------------------------------------------------------

HTML = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>The  Page
   Title</title>
  <style>body { color: red; } h1 { x: y }</style>
  <script>var secret = "SCRIPT JUNK"; if (a < b) {}</script>
</head>
<body>
  <header><a href="/">SITE BANNER</a></header>
  <nav><ul><li>NAV LINK ONE</li><li>NAV LINK TWO</li></ul></nav>
  <noscript>NOSCRIPT JUNK</noscript>
  <p>Lead   paragraph
     before any heading.</p>
  <h1>Main <em>Heading</em></h1>
  <p>Fish &amp; chips &lt;3 caf&eacute; &#8212; &#x263A;&nbsp;ok</p>
  <div>A div block<br>after a break</div>
  <h2>Sub one</h2>
  <ul><li>item one</li><li>item two</li></ul>
  <table><tr><td>cell a</td><td>cell b</td></tr><tr><td>cell c</td></tr></table>
  <h3>Deeper</h3>
  <pre>line 1
    indented line 2</pre>
  <blockquote>A quote.</blockquote>
  <h2>Sub two</h2>
  <article>
    <header><h3>Article title</h3></header>
    <p>Article text.</p>
  </article>
  <footer>FOOTER JUNK</footer>
</body>
</html>
"""


def test_html_sections_and_junk_dropped() -> None:
    doc = parse(HTML.encode(), DocType.HTML, fallback_title="fallback")
    assert doc.title == "The Page Title"
    all_text = "\n".join(section.text for section in doc.sections)
    for junk in ("SCRIPT JUNK", "color: red", "SITE BANNER", "NAV LINK", "NOSCRIPT", "FOOTER JUNK"):
        assert junk not in all_text
    texts = {section.heading_path: section.text for section in doc.sections}
    assert list(texts) == [
        (),
        ("Main Heading",),
        ("Main Heading", "Sub one"),
        ("Main Heading", "Sub one", "Deeper"),
        ("Main Heading", "Sub two", "Article title"),
    ]
    assert texts[()] == "Lead paragraph before any heading."
    assert texts[("Main Heading",)] == ("Fish & chips <3 caf\u00e9 \u2014 \u263a ok\n\nA div block\n\nafter a break")
    assert texts[("Main Heading", "Sub one")] == "item one\n\nitem two\n\ncell a cell b\n\ncell c"
    assert texts[("Main Heading", "Sub one", "Deeper")] == "line 1\n    indented line 2\n\nA quote."
    assert texts[("Main Heading", "Sub two", "Article title")] == "Article text."


def test_html_title_falls_back_to_first_h1_then_fallback() -> None:
    doc = parse(b"<html><body><h2>Two</h2><p>x</p><h1>One</h1><p>y</p></body></html>", DocType.HTML, fallback_title="f")
    assert doc.title == "One"
    doc = parse(b"<p>just text</p>", DocType.HTML, fallback_title="f")
    assert doc.title == "f"
    assert doc.sections == [Section((), "just text")]


def test_html_meta_charset_is_honoured() -> None:
    content = (
        '<html><head><meta charset="windows-1252"><title>Caf\u00e9</title></head><body><p>na\u00efve \u2013 ok</p>'
    )
    doc = parse(content.encode("cp1252"), DocType.HTML, fallback_title="f")
    assert doc.title == "Caf\u00e9"
    assert doc.sections[0].text == "na\u00efve \u2013 ok"
    legacy = b'<meta http-equiv="Content-Type" content="text/html; charset=ISO-8859-1"><p>gar\xe7on</p>'
    assert parse(legacy, DocType.HTML, fallback_title="f").sections[0].text == "gar\u00e7on"


def test_html_invalid_utf8_rejected() -> None:
    with pytest.raises(InvalidInputError, match=r"not valid UTF-8.*offset 6"):
        parse(b"<p>caf\xe9 \xe9</p>", DocType.HTML, fallback_title="f")


def test_html_with_only_junk_is_empty() -> None:
    content = b"<html><head><title>T</title><script>x()</script></head><body><nav>menu</nav> \n </body></html>"
    with pytest.raises(InvalidInputError, match="document is empty"):
        parse(content, DocType.HTML, fallback_title="f")


# --- pdf ---------------------------------------------------------------------------------------------


def test_pdf_text_is_extracted() -> None:
    content = make_pdf(
        [text_stream("Hello PDF world"), text_stream("Second page here.", "And a second line.")],
        title="A PDF Title",
    )
    assert detect_type("x.pdf", None, content) is DocType.PDF
    doc = parse(content, DocType.PDF, fallback_title="fallback")
    assert doc.title == "A PDF Title"
    assert doc.doc_type is DocType.PDF
    assert len(doc.sections) == 1
    assert doc.sections[0].heading_path == ()
    text = doc.sections[0].text
    assert "Hello PDF world" in text
    assert "Second page here." in text and "And a second line." in text
    # pages are separate paragraphs
    assert text.index("Hello PDF world") < text.index("\n\n") < text.index("Second page")


def test_pdf_title_falls_back_without_metadata() -> None:
    doc = parse(make_pdf([text_stream("Hello PDF world")]), DocType.PDF, fallback_title="paper")
    assert doc.title == "paper"
    assert doc.sections[0].text == "Hello PDF world"


def test_pdf_without_text_layer_rejected() -> None:
    drawing_only = b"0 0 m 200 200 l S"
    with pytest.raises(InvalidInputError, match="no text layer"):
        parse(make_pdf([drawing_only]), DocType.PDF, fallback_title="scan")


@pytest.mark.parametrize(
    "content",
    [
        b"%PDF-1.4\nthis is not really a pdf at all",
        b"%PDF-",
        make_pdf([text_stream("Hello PDF world")])[:150],
    ],
)
def test_corrupt_pdf_rejected(content: bytes) -> None:
    with pytest.raises(InvalidInputError, match="could not read PDF"):
        parse(content, DocType.PDF, fallback_title="broken")


def test_encrypted_pdf_rejected() -> None:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(make_pdf([text_stream("Secret text")])))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    with pytest.raises(InvalidInputError, match="could not read PDF: it is encrypted"):
        parse(out.getvalue(), DocType.PDF, fallback_title="locked")


def test_pdf_encrypted_with_empty_user_password_is_read() -> None:
    from pypdf import PdfWriter

    writer = PdfWriter(clone_from=io.BytesIO(make_pdf([text_stream("Open text")])))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    doc = parse(out.getvalue(), DocType.PDF, fallback_title="open")
    assert doc.sections[0].text == "Open text"


# A documentation page as generators write them: menus and sidebars on plain <div>s marked with ARIA roles,
# the content in a role="main" element, permalink marks after headings, the site's name in the <title>.
DOC_PAGE = """<!DOCTYPE html>
<html><head><title>json — JSON encoder — Python 3.11 documentation</title></head>
<body>
  <div class="related" role="navigation"><h3>Navigation</h3><ul><li><div>next |</div></li></ul></div>
  <div class="document"><div class="body" role="main">
    <section id="json">
      <h1>json — JSON encoder<a class="headerlink" href="#json">\u00b6</a></h1>
      <p>JSON is a data format.</p>
      <div class="admonition"><div><p>A nested div inside the content.</p></div></div>
      <section><h2>Basic Usage<a class="headerlink" href="#u">\u00b6</a></h2><p>Call dumps().</p></section>
    </section>
  </div></div>
  <div class="sphinxsidebar" role="navigation">
    <h3>Table of Contents</h3><div><div><ul><li>Basic Usage</li></ul></div></div>
    <h4>Next topic</h4><p>mailbox — Manipulate mailboxes</p>
  </div>
  <div role="search"><h3>Quick search</h3><form><input type="text"></form></div>
  <div class="footer">Copyright FOOTER JUNK</div>
</body></html>
"""


def test_doc_page_keeps_only_its_main_content() -> None:
    doc = parse(DOC_PAGE.encode(), DocType.HTML, fallback_title="f")
    assert doc.title == "json — JSON encoder"  # the site's name dropped: it is on every page
    texts = {section.heading_path: section.text for section in doc.sections}
    assert texts == {
        ("json — JSON encoder",): "JSON is a data format.\n\nA nested div inside the content.",
        ("json — JSON encoder", "Basic Usage"): "Call dumps().",
    }


def test_navigation_landmarks_are_dropped_with_everything_nested_in_them() -> None:
    page = (
        b"<html><body><p>before</p><div role='navigation'><div><div>MENU</div></div><p>MORE MENU</p></div>"
        b"<p>after</p></body></html>"
    )
    doc = parse(page, DocType.HTML, fallback_title="f")
    assert doc.sections == [Section((), "before\n\nafter")]


def test_a_title_that_does_not_start_with_the_first_heading_is_kept() -> None:
    page = b"<html><head><title>Release notes</title></head><body><h1>Version 2</h1><p>x</p></body></html>"
    assert parse(page, DocType.HTML, fallback_title="f").title == "Release notes"
