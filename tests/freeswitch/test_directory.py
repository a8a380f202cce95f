"""FreeSWITCH authenticates REGISTER and INVITE against eslbridge's users table through mod_xml_curl.

Every user here exists only in eslbridge's database (FreeSWITCH's static directory has 1000-1019 with
another password), so a 200 can only come from eslbridge's answer.
"""

from __future__ import annotations

import time

import psycopg

from tests.daemon_fixtures import wait_for
from tests.freeswitch.conftest import DOMAIN, Bridge
from tests.freeswitch.landed import judge
from tests.freeswitch.sipp import Run

PASSWORD = "first-Secret-77"
NEW_PASSWORD = "second-Secret-88"
# Long enough for NOTIFY -> xml_flush_cache to reach FreeSWITCH on a loaded host; far below the
# directory's cache lifetime (cache_seconds, 300 s), so passing proves the flush, not an expiry.
FLUSH_WINDOW = 10.0


def register(bridge: Bridge, user: str, password: str, scenario: str = "register") -> Run:
    return bridge.sipp(scenario, "-s", user, "-au", user, "-ap", password, "-m", "1", "-timeout", "20s",
                       "-timeout_error", target=bridge.fs.internal).wait()


def invite(bridge: Bridge, user: str, password: str, scenario: str, destination: str = "tone") -> Run:
    return bridge.sipp(scenario, "-key", "caller", user, "-s", destination, "-au", user, "-ap", password, "-m", "1",
                       "-timeout", "30s", "-timeout_error", target=bridge.fs.internal).wait()


def until(attempt, accepted, what: str) -> Run:
    """Repeat `attempt` until `accepted(run)`, within FLUSH_WINDOW; the last run on failure."""
    deadline = time.monotonic() + FLUSH_WINDOW
    while True:
        run = attempt()
        if accepted(run):
            return run
        assert time.monotonic() < deadline, f"{what} within {FLUSH_WINDOW} s; sipp saw: {run.describe()}"
        time.sleep(0.5)


def registered(run: Run) -> bool:
    return run.returncode == 0 and run.call.final_code == 200


def refused(run: Run) -> bool:
    return run.returncode == 0 and run.call.final_code in (401, 403)


def test_register_and_invite_for_a_user_only_eslbridge_knows(bridge: Bridge) -> None:
    user = bridge.new_user(PASSWORD)
    run = register(bridge, user, PASSWORD)
    assert registered(run), run.describe()
    with psycopg.connect(bridge.dsn) as conn:
        last_login = lambda: conn.execute(  # noqa: E731
            "SELECT last_login FROM users WHERE username = %s", (user,)).fetchone()[0]
        wait_for(last_login, 15, f"users.last_login of {user} after sipp saw {run.describe()}")
    call = invite(bridge, user, PASSWORD, "uac_auth_wait_bye")
    assert call.returncode == 0 and call.call.final_code == 200, call.describe()
    row = judge(call, bridge.dsn)
    with psycopg.connect(bridge.dsn) as conn:
        user_id = conn.execute("SELECT id FROM users WHERE username = %s", (user,)).fetchone()[0]
    assert row.user_id == user_id, f"the call of {user} is attributed to {row.user_id}"


def test_wrong_password_is_refused_and_the_refused_invite_has_its_row(bridge: Bridge) -> None:
    user = bridge.new_user(PASSWORD)
    run = register(bridge, user, "not-the-Password-1", "register_refused")
    assert refused(run), run.describe()
    call = invite(bridge, user, "not-the-Password-1", "uac_auth_refused")
    assert call.returncode == 0 and call.call.final_code in (401, 403, 407), call.describe()
    # FreeSWITCH reports the refused INVITE as a lone CHANNEL_HANGUP_COMPLETE (no channel times).
    judge(call, bridge.dsn)


def test_password_change_takes_effect_without_waiting_for_freeswitchs_cache(bridge: Bridge) -> None:
    user = bridge.new_user(PASSWORD)
    assert registered(run := register(bridge, user, PASSWORD)), run.describe()  # FreeSWITCH now caches the user
    done = bridge.cli("user", "passwd", "--realm", DOMAIN, "--password-stdin", user, stdin=NEW_PASSWORD + "\n")
    assert done.returncode == 0, done.stdout
    until(lambda: register(bridge, user, NEW_PASSWORD), registered, "the new password to work")
    assert refused(run := register(bridge, user, PASSWORD, "register_refused")), run.describe()
    call = invite(bridge, user, NEW_PASSWORD, "uac_auth_wait_bye")
    assert call.returncode == 0 and call.call.final_code == 200, call.describe()


def test_disabled_user_can_neither_register_nor_call(bridge: Bridge) -> None:
    user = bridge.new_user(PASSWORD)
    assert registered(run := register(bridge, user, PASSWORD)), run.describe()
    done = bridge.cli("user", "disable", "--realm", DOMAIN, user)
    assert done.returncode == 0, done.stdout
    until(lambda: register(bridge, user, PASSWORD, "register_refused"), refused, "the disabled user's REGISTER refused")
    call = invite(bridge, user, PASSWORD, "uac_auth_refused")
    assert call.returncode == 0 and call.call.final_code in (401, 403, 407), call.describe()
