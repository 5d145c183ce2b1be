"""Errors raised while choosing or starting a model engine."""

from __future__ import annotations


class BackendError(RuntimeError):
    """A local model backend could not be chosen, started or reached."""


class EngineNotAvailableError(BackendError):
    """The requested engine or device is not usable on this machine."""


class BackendStartError(BackendError):
    """An engine was started but did not become ready before its deadline."""
