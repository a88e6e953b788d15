"""Deliberate errors: the only ones whose message reaches a client or the terminal as is."""

from __future__ import annotations


class OrchestrionError(Exception):
    """Base of every error meant for the user: its message names the cause and the fix."""


class ConfigurationError(OrchestrionError):
    """Settings or environment make the requested work impossible."""


class StackNotRunningError(OrchestrionError):
    """A command needs the embedded stack, and none runs for this data dir."""


class ServiceStartError(OrchestrionError):
    """A service of the embedded stack could not be built or started."""


class InvalidInputError(OrchestrionError):
    """The caller sent something we cannot accept; the message says what and why."""


class IdempotencyKeyReusedError(InvalidInputError):
    """An Idempotency-Key came back with other content than it was first used for."""


class ConflictError(OrchestrionError):
    """The request conflicts with the current state (a busy thread that refuses another run)."""


class NotFoundError(OrchestrionError):
    """The thing asked for does not exist for this caller (another tenant's things never exist)."""


class BusyError(OrchestrionError):
    """Accepted work is backed up; the caller should retry after `retry_after_s` seconds. `reason` names the
    limit, for the 429 counter (a few fixed words, never a tenant or a number)."""

    def __init__(self, message: str, retry_after_s: int, reason: str = "busy") -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.reason = reason


class AuthenticationError(OrchestrionError):
    """Missing or unknown credentials."""


class EmbeddingMismatchError(OrchestrionError):
    """Stored vectors were made by another embedding model than this process uses."""
