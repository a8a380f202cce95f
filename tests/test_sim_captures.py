"""The simulator's packaged captures are the real ones, byte for byte (tools/pack_sim_captures.py)."""

from __future__ import annotations

import pytest

from eslbridge.sim.templates import SCENARIO_FILES, capture_bytes, packaged_files
from tests.paths import CAPTURED


@pytest.mark.parametrize("filename", packaged_files(SCENARIO_FILES))
def test_packaged_capture_equals_repository_fixture(filename: str) -> None:
    assert capture_bytes(filename) == (CAPTURED / filename).read_bytes(), (
        f"{filename} differs from tests/fixtures/captured: run python tools/pack_sim_captures.py")
