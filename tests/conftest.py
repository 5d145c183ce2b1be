"""Shared fixtures: one real llama.cpp engine on the bundled model for the whole session."""

from __future__ import annotations

import pytest

from lab_support.backend import start_backend


@pytest.fixture(scope="session")
def backend():
    """The real bundled engine (llama.cpp, CPU unless a GPU build and GPU are present), started once."""
    with start_backend(engine="llama.cpp", reuse=False) as running:
        yield running
