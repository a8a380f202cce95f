"""`cli`: run `eslbridge ...` in-process against this test's database; returns (exit code, stdout, stderr)."""

from __future__ import annotations

import io
import sys

import pytest

from eslbridge.cli import main


@pytest.fixture
def cli(db_dsn, monkeypatch, capsys):
    monkeypatch.setenv("ESLBRIDGE_DATABASE_URL", db_dsn)

    def run(*argv: str, stdin: str = "") -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
