"""Where the tests' data lives: all of it inside the repository, so a bare clone runs the suite.

The one exception is the part of the public ESL corpus that may not be redistributed here (see
tests/fixtures/public/PROVENANCE.md); tests of it ask for `shared_public` and run only where the full
corpus sits beside the checkout.
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CAPTURED = FIXTURES / "captured"
PUBLIC = FIXTURES / "public"
RECORDED = FIXTURES / "recorded"  # recorded by the project from the real FreeSWITCH build, one scenario a file
SEEDS = ROOT / "docs" / "seeds"
SHARED_PUBLIC = ROOT.parent / "shared" / "fixtures" / "public"


def shared_public(name: str) -> Path:
    """A file of the full public corpus, or a skip that says where it was looked for."""
    path = SHARED_PUBLIC / name
    if not path.is_file():
        pytest.skip(f"{name} is not redistributable and not carried here; it is read from {SHARED_PUBLIC}, "
                    "which does not exist on this machine")
    return path
