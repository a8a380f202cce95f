"""Progress of long admin work: plain lines off a terminal, one rewritten line with an ETA on one."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from eslbridge.ops.progress import Progress

ROOT = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_each_step_is_a_plain_line_with_done_total_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress("re-encrypted rows", 300, stream=out, clock=clock, tty=False)
    for _ in range(3):
        clock.now += 10
        bar.advance(100, note="[calls]")
    bar.finish()
    assert out.getvalue().splitlines() == [
        "re-encrypted rows: 100/300 (33%), ETA 20s [calls]",
        "re-encrypted rows: 200/300 (66%), ETA 10s [calls]",
        "re-encrypted rows: 300/300 (100%) [calls]",
    ]
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_on_a_terminal_one_line_is_rewritten_at_most_five_times_a_second() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress("migrating", 1000, stream=out, clock=clock, tty=True)
    for _ in range(1000):
        clock.now += 0.01  # 10 s in all: about 50 redraws, not 1000
        bar.advance()
    bar.finish()
    text = out.getvalue()
    assert text.endswith("migrating: 1000/1000 (100%)\n") and text.count("\n") == 1
    assert 40 <= text.count("\r") <= 60
    assert "ETA 5s" in text  # half way


def test_an_unknown_total_counts_without_an_eta() -> None:
    out = io.StringIO()
    bar = Progress("scanned", None, stream=out, unit="rows", tty=False)
    bar.advance(7)
    assert out.getvalue() == "scanned: 7 rows\n"


def test_long_hours_are_shown_as_hours() -> None:
    out, clock = io.StringIO(), Clock()
    bar = Progress("x", 100, stream=out, clock=clock, tty=False)
    clock.now = 3600
    bar.advance(10)
    assert out.getvalue().strip() == "x: 10/100 (10%), ETA 9h00m"


def test_migrate_and_retention_report_progress_as_plain_lines(empty_db_dsn, tmp_path) -> None:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ESLBRIDGE_")},
           "ESLBRIDGE_DATABASE_URL": empty_db_dsn, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "eslbridge", "migrate"], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    steps = [line for line in proc.stderr.splitlines() if line.startswith("migrating: ")]
    total = len(proc.stdout.splitlines())
    assert len(steps) == total and steps[0].startswith(f"migrating: 1/{total} (") and "0001_" in steps[0]
    assert steps[-1].startswith(f"migrating: {total}/{total} (100%)")
    config = tmp_path / "eslbridge.yaml"
    config.write_text("retention:\n  calls_days: 30\n")
    proc = subprocess.run([sys.executable, "-m", "eslbridge", "retention", "run", "--config", str(config)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert [line.split(" (")[0] for line in proc.stderr.splitlines()] == [
        f"retention: {n}/4 tables" for n in range(1, 5)]
