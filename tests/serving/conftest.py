"""Fixtures: a real llamita server over the default model, shared by the serving tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from serving_helpers import RunningServer, start_server


@pytest.fixture(scope="package")
def loaded(llm_f32):
    """The default model in float32, shared with `llm_f32` (the static-cache reference path)."""
    return llm_f32.loaded


@pytest.fixture(scope="package")
def server(loaded) -> Iterator[RunningServer]:
    running, stop = start_server(loaded)
    yield running
    stop()
