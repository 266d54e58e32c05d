"""The pure parts of ``puppylogd.cli`` (the command itself is run in tests/integration)."""

from __future__ import annotations

import gc
from typing import Any

import pytest

from puppylogd.cli import GC_YOUNG_THRESHOLD, fewer_gc_passes


def _young_passes_while_rows_live(rows: int) -> int:
    """Count youngest-generation GC passes while ``rows`` row-like tuples are built, then freed."""
    passes = 0

    def count(phase: str, info: dict[str, Any]) -> None:
        nonlocal passes
        if phase == "start" and info["generation"] == 0:
            passes += 1

    gc.collect()  # start from an empty youngest generation
    gc.callbacks.append(count)
    try:
        batch = [(i, "host", None, "/path", 200, str(i)) for i in range(rows)]
        del batch
    finally:
        gc.callbacks.remove(count)
    return passes


def test_rows_of_batches_in_flight_set_off_no_gc_pass() -> None:
    """Three default batches of rows live at once: no pass inside, the usual ~85 without."""
    assert gc.isenabled()
    rows = 3 * 20_000
    assert rows < GC_YOUNG_THRESHOLD
    assert _young_passes_while_rows_live(rows) > 50  # the default threshold (700)
    with fewer_gc_passes():
        assert gc.get_threshold()[0] == GC_YOUNG_THRESHOLD
        assert _young_passes_while_rows_live(rows) == 0


def test_thresholds_are_restored_even_after_an_error() -> None:
    """Whatever happens inside, the process's GC settings come back unchanged."""
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_gc_passes():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
