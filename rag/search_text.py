"""The field keyword search reads, and the upgrade that gives it to chunks written before it existed.

BM25 over title, headings and text as three BM25F fields let a question word found in a short title (a
module's name, say) outweigh the passage that answers the question; as one field, each word counts like any
other and the passage's own words decide (bench/results/retrieval_quality.md: keyword R@1 on the Python
library pages 0.69 -> 0.76 on the tuning questions).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from weaviate.collections import Collection

log = logging.getLogger(__name__)

# The collections' description records it as "orchestrion": 2 added `search_text` to every chunk.
SCHEMA_VERSION = 2
# What keyword search read before version 2.
LEGACY_KEYWORD_FIELDS: tuple[str, ...] = ("text", "title", "headings")


def search_text(title: str, heading_path: Sequence[str], text: str) -> str:
    return "\n".join(part for part in (title, " > ".join(heading_path), text) if part)


def upgrade_chunks(collection: Collection[Any, Any]) -> int:
    """Fill in `search_text` on every tenant's chunks that lack it, then record the version; returns how
    many were filled. Run twice at once (two processes starting), it writes the same values twice; an update
    never brings back a chunk deleted meanwhile."""
    recorded = json.loads(collection.config.get().description or "{}")
    if recorded.get("orchestrion", 1) >= SCHEMA_VERSION:
        return 0
    filled = 0
    for tenant in collection.tenants.get():
        chunks = collection.with_tenant(tenant)
        for obj in chunks.iterator(return_properties=["title", "heading_path", "text", "search_text"]):
            props = obj.properties
            if props.get("search_text") is None:
                value = search_text(str(props.get("title") or ""), list(props.get("heading_path") or []),
                                    str(props.get("text") or ""))  # fmt: skip
                chunks.data.update(obj.uuid, properties={"search_text": value})
                filled += 1
    collection.config.update(description=json.dumps({**recorded, "orchestrion": SCHEMA_VERSION}))
    log.info("%s: search_text filled in on %d chunks (schema version %d)", collection.name, filled, SCHEMA_VERSION)
    return filled
