"""Document ids: what a caller may give, and the id made from a file's path when the caller gives none.

A caller's id is checked as it is. A path's id is the path itself where it already is a valid id
(`guide.md`, `a/README.md`); otherwise (a leading underscore, spaces, non-ASCII, too long) it is the path
made valid (accents dropped, other characters replaced) plus `@` and a digest of the original path, so two
paths that look alike once made valid (`__future__.html`, `future__.html`) stay two documents, and the same
path always gets the same id.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

from core.errors import InvalidInputError

MAX_LENGTH = 200
DOC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,199}$")
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9._:@-]+")
_LEADING = re.compile(r"^[^A-Za-z0-9]+")
_DIGEST_CHARS = 10


def check_doc_id(doc_id: str) -> str:
    if not DOC_ID.match(doc_id):
        raise InvalidInputError(
            f"invalid doc_id {doc_id!r}: 1-{MAX_LENGTH} characters of letters, digits and . _ : / @ -, starting "
            "with a letter or digit"
        )
    return doc_id


def doc_id_for_path(parts: Sequence[str]) -> str:
    """A valid, stable, unique doc id for a relative path given as its parts (`("a", "b.md")`)."""
    original = "/".join(parts)
    if DOC_ID.match(original):
        return original
    digest = "@" + hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:_DIGEST_CHARS]
    readable = "/".join(_valid_part(part) for part in parts)
    # The end of a long path says most about the file: keep it.
    readable = _LEADING.sub("", readable[-(MAX_LENGTH - len(digest)) :]) or "doc"
    return readable + digest


def _valid_part(part: str) -> str:
    ascii_only = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
    return _NOT_ALLOWED.sub("-", ascii_only).strip("-") or "-"
