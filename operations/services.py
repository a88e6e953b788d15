"""What the operations need, opened once per process by its composition root and closed with it."""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import OrchestrionError
from core.settings import Settings
from rag.services import RagServices
from routing.client import ModelClient


class ModelsUnavailableError(OrchestrionError):
    """No model fleet is configured for this process; the message says why."""


@dataclass
class Services:
    settings: Settings
    rag: RagServices
    models: ModelClient | None = None
    models_error: str = ""

    def require_models(self) -> ModelClient:
        if self.models is None:
            raise ModelsUnavailableError(f"the model router is not available here: {self.models_error or 'starting'}")
        return self.models
