"""`eslbridge user limit`: show, set and clear a user's outbound call limit, audited, with one-line errors."""

from __future__ import annotations

import uuid

import psycopg

from eslbridge.accounts.audit import os_user
from eslbridge.errors import EXIT_FAILURE, EXIT_USAGE
from tests.test_authorizer import add_user

REALM = "pbx.example.org"


def limit_row(db: psycopg.Connection, user_id: str) -> tuple | None:
    return db.execute("SELECT max_requests, window_duration_minutes, request_count FROM rate_limits"
                      " WHERE user_id = %s AND endpoint = 'call'", (user_id,)).fetchone()


def test_show_set_change_clear(cli, db) -> None:
    user_id = add_user(db, "1000", REALM)
    code, out, _ = cli("user", "limit", "1000", "--realm", REALM)
    assert code == 0 and out.splitlines() == [f"1000@{REALM}: no limit",
                                              "current window: no call attempt counted yet"]
    assert limit_row(db, user_id) is None  # showing changes nothing

    code, out, _ = cli("user", "limit", "1000", "--realm", REALM.upper(), "--max", "30", "--window-minutes", "15")
    assert code == 0 and out.startswith(f"1000@{REALM}: at most 30 call(s) per 15 minute(s)\n")
    assert limit_row(db, user_id) == (30, 15, 0)

    db.execute("UPDATE rate_limits SET request_count = 7 WHERE user_id = %s", (user_id,))
    code, out, _ = cli("user", "limit", "1000", "--realm", REALM, "--max", "5")  # the window is kept
    assert code == 0 and "at most 5 call(s) per 15 minute(s)" in out and "7 attempt(s) since" in out
    assert limit_row(db, user_id) == (5, 15, 7)

    code, out, _ = cli("user", "limit", "1000", "--realm", REALM, "--clear")
    assert code == 0 and out.startswith(f"1000@{REALM}: no limit\n")
    assert limit_row(db, user_id) == (None, 15, 7)  # the count is history: kept

    audits = db.execute("SELECT action, resource_id, user_id, details, actor FROM audit_logs ORDER BY id").fetchall()
    uid = uuid.UUID(user_id)
    assert audits == [
        ("user.limit_show", user_id, uid, {"endpoint": "call"}, os_user()),
        ("user.limit_set", user_id, uid, {"endpoint": "call", "max_requests": 30, "window_minutes": 15}, os_user()),
        ("user.limit_set", user_id, uid, {"endpoint": "call", "max_requests": 5, "window_minutes": 15}, os_user()),
        ("user.limit_clear", user_id, uid, {"endpoint": "call"}, os_user()),
    ]


def test_errors_are_one_line(cli, db) -> None:
    add_user(db, "1000", REALM)
    cases = [
        (("nobody", "--realm", REALM, "--max", "3"), EXIT_FAILURE, f"no user nobody@{REALM}"),
        (("1000", "--realm", REALM, "--max", "-1"), EXIT_USAGE, "between 0 and"),
        (("1000", "--realm", REALM, "--max", "3", "--window-minutes", "0"), EXIT_USAGE, "between 1 and"),
        (("1000", "--realm", REALM, "--max", "9999999999"), EXIT_USAGE, "between 0 and"),
        (("1000", "--realm", REALM, "--window-minutes", "5"), EXIT_USAGE, "--window-minutes goes with --max"),
        (("1000", "--realm", REALM, "--max", "many"), EXIT_USAGE, "expected a whole number"),
        (("1000", "--realm", REALM, "--max", "3", "--clear"), EXIT_USAGE, "not allowed with argument"),
        (("bad user", "--realm", REALM), EXIT_USAGE, "user name"),
        (("1000",), EXIT_USAGE, "--realm"),
    ]
    for argv, exit_code, message in cases:
        code, out, err = cli("user", "limit", *argv)
        assert (code, out) == (exit_code, ""), argv
        assert "Traceback" not in err and message in err.splitlines()[-1], (argv, err)
        if not err.startswith("usage: "):  # argparse's own errors follow its usage lines
            assert len(err.splitlines()) == 1, err
    assert db.execute("SELECT count(*) FROM rate_limits").fetchone() == (0,)
    assert db.execute("SELECT count(*) FROM audit_logs").fetchone() == (0,)


def test_help_describes_the_command(cli) -> None:
    code, out, _ = cli("user", "limit", "--help")
    assert code == 0
    for text in ("--max N", "--clear", "--window-minutes M", "--realm", "no limit"):
        assert text in out
