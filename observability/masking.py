"""What a span may carry: secrets never, document text only as a preview (by default).

Applied where spans are exported (the Langfuse client's `mask_otel_spans` hook, which wraps every exporter
Orchestrion uses: Langfuse, OTLP, the local file), so it covers every span of the process, whoever made it:
our observations, the Langfuse SDK's generations, the MCP SDK's and FastAPI's spans.

- Secrets: Orchestrion's tokens, bearer credentials, provider-style keys, and every secret value the settings
  hold are replaced by a marker in every string attribute.
- Inputs and outputs (`langfuse.observation.input|output`, JSON): `preview` (the default) keeps each string
  up to `preview_chars` and says how much was cut; `none` keeps only their shape; `full` keeps them whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from langfuse.types import MaskOtelSpansParams, MaskOtelSpansResult, OtelSpanPatch
from pydantic import BaseModel, SecretStr

from core.settings import Settings

REDACTED = "[redacted]"
IO_ATTRIBUTES = ("langfuse.observation.input", "langfuse.observation.output")
# Orchestrion's tokens (core/tenancy.py), a bearer credential, OpenAI/Anthropic/Langfuse-style secret keys.
_SECRET_SHAPES = re.compile(r"orch_[A-Za-z0-9_\-]{16,}|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*|\bsk-[A-Za-z0-9_\-]{12,}")


def secret_values(settings: Settings) -> list[str]:
    """Every secret the settings hold (SecretStr fields, static tokens), longest first."""
    found: list[str] = list(settings.tenants.static_tokens)

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr) and value.get_secret_value():
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)

    walk(settings)
    return sorted({s for s in found if len(s) >= 6}, key=len, reverse=True)


@dataclass(frozen=True)
class Masking:
    capture: str = "preview"  # preview | none | full
    preview_chars: int = 500
    secrets: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Masking:
        lf = settings.langfuse
        return cls(lf.capture, lf.preview_chars, tuple(secret_values(settings)))

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _SECRET_SHAPES.sub(REDACTED, text)

    def data(self, value: Any) -> Any:
        """An input or output as it may be exported."""
        if isinstance(value, str):
            value = self.redact(value)
            if self.capture == "none":
                return f"[{len(value)} chars]"
            if self.capture == "preview" and len(value) > self.preview_chars:
                return f"{value[: self.preview_chars]}… [{len(value) - self.preview_chars} more chars]"
            return value
        if isinstance(value, Mapping):
            return {str(k): self.data(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        return value

    def attribute(self, key: str, value: Any) -> Any:
        if key in IO_ATTRIBUTES and isinstance(value, str):
            try:
                decoded = json.loads(value)
            except ValueError:
                decoded = value
            return json.dumps(self.data(decoded), ensure_ascii=False, default=str)
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, tuple | list) and value and all(isinstance(v, str) for v in value):
            return tuple(self.redact(v) for v in value)
        return value

    def spans(self, *, params: MaskOtelSpansParams) -> MaskOtelSpansResult:
        """The Langfuse client's export-stage hook: a patch for each span with something to hide."""
        patches: dict[Any, OtelSpanPatch | None] = {}
        for identifier, span in params.spans.items():
            changed = dict(_changed(self, span.attributes.items()))
            if changed:
                patches[identifier] = OtelSpanPatch(set_attributes=changed)
        return MaskOtelSpansResult(span_patches=patches)


def _changed(masking: Masking, attributes: Iterable[tuple[str, Any]]) -> Iterable[tuple[str, Any]]:
    for key, value in attributes:
        masked = masking.attribute(key, value)
        if masked != value and not (isinstance(value, list) and tuple(value) == masked):
            yield key, masked
