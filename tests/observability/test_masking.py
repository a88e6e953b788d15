"""Spans never carry secrets, and carry document text only as a preview (the default)."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core.settings import Settings
from observability.masking import REDACTED, Masking
from observability.observations import observe
from observability.tracing import init_tracing

TOKEN = "orch_" + "x" * 40


def test_exported_spans_hide_tokens_and_settings_secrets_and_cut_long_text(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        tenants={"static_tokens": {"static-secret-value-123": "acme"}},
        langfuse={"preview_chars": 50},
    )
    exporter = InMemorySpanExporter()
    tracing = init_tracing(settings, "test", span_exporter=exporter)
    passage = "refunds " * 100
    with observe("tool search", as_type="tool", input={"query": f"Bearer {TOKEN}", "k": 3}) as span:
        span.output({"text": passage, "note": "key static-secret-value-123 here"})
    tracing.flush()

    [tool] = [s for s in exporter.get_finished_spans() if s.name == "tool search"]
    attributes = json.dumps(dict(tool.attributes or {}))
    assert TOKEN not in attributes and "static-secret-value-123" not in attributes
    output = json.loads(str((tool.attributes or {})["langfuse.observation.output"]))
    assert output["text"].startswith("refunds refunds") and output["text"].endswith("[750 more chars]")
    assert REDACTED in output["note"]
    assert json.loads(str((tool.attributes or {})["langfuse.observation.input"]))["k"] == 3
    tracing.shutdown()


def test_capture_none_keeps_only_the_length_and_full_keeps_text() -> None:
    assert Masking(capture="none").data({"a": "hello"}) == {"a": "[5 chars]"}
    assert Masking(capture="full").data("x" * 2000) == "x" * 2000
    assert Masking().redact(f"token={TOKEN}; sk-abcdefghijklmnop1234") == f"token={REDACTED}; {REDACTED}"
