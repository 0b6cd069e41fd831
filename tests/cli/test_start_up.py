"""cli.common.start_up: the collector is paused inside and restored (with start-up's objects
frozen) after, also when loading fails."""

from __future__ import annotations

import gc

import pytest

from llamita.cli.common import start_up


@pytest.mark.parametrize("enabled", [True, False])
def test_restores_the_collector(enabled: bool) -> None:
    (gc.enable if enabled else gc.disable)()
    try:
        frozen = gc.get_freeze_count()
        with pytest.raises(RuntimeError), start_up():
            assert not gc.isenabled()
            kept = [[] for _ in range(1000)]  # noqa: F841 (objects made during start-up)
            raise RuntimeError("the model file is corrupt")
        assert gc.isenabled() is enabled
        assert gc.get_freeze_count() >= frozen + 1000
    finally:
        gc.unfreeze()
        gc.enable()
