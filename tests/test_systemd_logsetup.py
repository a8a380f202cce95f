"""eslbridge.logsetup: one line per event for journald, JSON format, and LogOnce rate limiting."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from eslbridge.logsetup import LogOnce, setup_logging


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_format_keeps_one_line_per_event(restore_root_logger: None) -> None:
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    log = logging.getLogger("eslbridge.test")
    log.debug("hidden")
    log.warning("caller sent %s", "x\nINFO forged: line")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = out.getvalue().splitlines()
    assert lines[0] == "WARNING eslbridge.test: caller sent x\\nINFO forged: line"
    assert len(lines) == 2 and lines[1].startswith("ERROR eslbridge.test: failed\\nTraceback")
    assert "RuntimeError: boom" in lines[1]


def test_json_format(restore_root_logger: None) -> None:
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    logging.getLogger("eslbridge.x").debug("two\nlines %d", 2)
    (line,) = out.getvalue().splitlines()
    entry = json.loads(line)
    assert entry["level"] == "debug" and entry["logger"] == "eslbridge.x" and entry["msg"] == "two\nlines 2"
    assert entry["ts"].endswith("+00:00")


def test_bad_format_is_refused() -> None:
    with pytest.raises(ValueError):
        setup_logging("info", "xml")


def test_log_once_per_kind_with_rate_limit(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    once = LogOnce(logging.getLogger("eslbridge.esl"), interval=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="eslbridge.esl"):
        assert once.warning("bad-json", "bad JSON from %s", "fs1")
        assert not once.warning("bad-json", "bad JSON from %s", "fs1")
        assert not once.warning("bad-json", "bad JSON from %s", "fs1")
        assert once.warning("bad-utf8", "invalid UTF-8 from %s", "fs1")  # another kind: logged
        now[0] += 61
        assert once.error("bad-json", "bad JSON from %s", "fs2")
    assert [r.getMessage() for r in caplog.records] == [
        "bad JSON from fs1",
        "invalid UTF-8 from fs1",
        "bad JSON from fs2 (2 similar suppressed)",
    ]
    assert caplog.records[-1].levelno == logging.ERROR
