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
