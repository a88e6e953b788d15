"""/readyz needs no token, so a failing dependency is named without its internals (hosts, ports, driver text)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from api.app import _readiness

pytestmark = pytest.mark.anyio

SECRET_DETAIL = "connect to 10.9.8.7:6379 refused by redis-driver"


class _Refusing:
    def __getattr__(self, name: str) -> Any:
        raise ConnectionError(SECRET_DETAIL)


async def test_a_failing_check_says_unreachable_and_logs_the_detail(caplog: pytest.LogCaptureFixture) -> None:
    redis = SimpleNamespace(client=_Refusing)
    host: Any = SimpleNamespace(
        store=SimpleNamespace(redis=redis),
        services=SimpleNamespace(
            rag=SimpleNamespace(store=SimpleNamespace(client=_Refusing())), models=None, models_error=SECRET_DETAIL
        ),
    )
    with caplog.at_level(logging.WARNING, logger="api.app"):
        checks = await _readiness(host)

    assert checks == {"redis": "unreachable", "weaviate": "unreachable", "model": "unreachable"}
    assert SECRET_DETAIL in caplog.text  # the operator still sees why
