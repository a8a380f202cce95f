"""eslbridge.ops.logs: one line per event for journald, JSON format, and LogOnce rate limiting."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from eslbridge.ops.logs import LogOnce, RateLimitFilter, setup_logging


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
    stamps, lines = zip(*(line.split(" ", 1) for line in out.getvalue().splitlines()), strict=True)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", s) for s in stamps)  # UTC, ms
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
        "bad JSON from fs2 (2 more in the last 61 s)",
    ]
    assert caplog.records[-1].levelno == logging.ERROR


def test_a_library_logger_repeating_itself_is_rate_limited_with_a_count(restore_root_logger: None) -> None:
    now = [100.0]
    out = io.StringIO()
    setup_logging("info", "text", stream=out)
    pool_log = logging.getLogger("psycopg.pool")
    pool_log.filters[:] = [RateLimitFilter(interval=60, clock=lambda: now[0])]
    try:
        for _ in range(50):  # an outage: the pool retries every second
            pool_log.warning("error connecting in %r: %s", "pool-1", "connection refused")
            now[0] += 1
        now[0] += 15
        pool_log.warning("error connecting in %r: %s", "pool-1", "connection refused")
    finally:
        pool_log.filters[:] = []
    lines = [line.split(" ", 1)[1] for line in out.getvalue().splitlines()]
    message = "WARNING psycopg.pool: error connecting in 'pool-1': connection refused"
    assert lines == [message, message + " (49 more in the last 65 s)"]


def test_setup_logging_rate_limits_the_database_libraries_once(restore_root_logger: None) -> None:
    setup_logging("info", "text", stream=io.StringIO())
    setup_logging("debug", "json", stream=io.StringIO())
    assert sum(isinstance(f, RateLimitFilter) for f in logging.getLogger("psycopg.pool").filters) == 1
