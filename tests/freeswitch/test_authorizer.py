"""The dialplan's `socket` application hands each call to eslbridge, which lets it on or hangs it up.

The extensions below are installed into the running FreeSWITCH (as an operator would install
conf/freeswitch/dialplan/eslbridge_outbound.xml) with the session's outbound port.
"""

from __future__ import annotations

import psycopg
import pytest

from eslbridge.accounts.roles import add_role
from tests.daemon_fixtures import wait_for
from tests.freeswitch.conftest import DOMAIN, Bridge, FreeSwitch
from tests.freeswitch.landed import judge
from tests.freeswitch.sipp import Run

PASSWORD = "socket-Secret-55"
EXTENSIONS = """<include>
  <!-- authorized_tone: ask eslbridge, then the tone extension's answer, 2 s tone, hangup. -->
  <extension name="eslbridge_authorized_tone">
    <condition field="destination_number" expression="^authorized_tone$">
      <action application="socket" data="127.0.0.1:{port} async full"/>
      <action application="answer"/>
      <action application="playback" data="tone_stream://%(2000,0,440)"/>
      <action application="hangup" data="NORMAL_CLEARING"/>
    </condition>
  </extension>
  <!-- The same after 3 s: time for a test to change the user between digest auth and the socket. -->
  <extension name="eslbridge_authorized_slow_tone">
    <condition field="destination_number" expression="^authorized_slow_tone$">
      <action application="sleep" data="3000"/>
      <action application="transfer" data="authorized_tone XML default"/>
    </condition>
  </extension>
</include>
"""


@pytest.fixture
def socket_bridge(bridge: Bridge, freeswitch: FreeSwitch) -> Bridge:
    if "authorizer" not in freeswitch.extensions:
        freeswitch.add_extension("authorizer", EXTENSIONS.format(port=freeswitch.outbound_port))
    return bridge


def call(bridge: Bridge, user: str, scenario: str, destination: str = "authorized_tone") -> Run:
    return bridge.sipp(scenario, "-key", "caller", user, "-s", destination, "-au", user, "-ap", PASSWORD, "-m", "1",
                       "-timeout", "30s", "-timeout_error", target=bridge.fs.internal).wait()


def decisions(dsn: str, call_uuid: str) -> tuple[list[tuple], list[tuple]]:
    """(call_events rows of the authorizer, audit_logs rows) of one call."""
    with psycopg.connect(dsn) as conn:
        events = conn.execute("SELECT event_type, event_data->>'reason' FROM call_events"
                              " WHERE call_uuid = %s AND event_type IN ('authorized', 'refused')",
                              (call_uuid,)).fetchall()
        audits = conn.execute("SELECT action, details->>'reason' FROM audit_logs"
                              " WHERE resource_type = 'call' AND resource_id = %s", (call_uuid,)).fetchall()
    return events, audits


def assert_refused(bridge: Bridge, run: Run, reason: str) -> None:
    assert run.returncode == 0 and run.call.final_code == 603 and run.call.answered_at is None, run.describe()
    row = judge(run, bridge.dsn)
    assert row.disconnect_reason == "CALL_REJECTED", row.describe()
    events, audits = decisions(bridge.dsn, row.call_uuid)
    told = f"sipp saw: {run.describe()}; call_events {events}; audit_logs {audits}"
    assert len(events) == 1 and events[0][0] == "refused" and reason in events[0][1], told
    assert len(audits) == 1 and audits[0][0] == "call.refused" and reason in audits[0][1], told


def test_allowed_user_call_proceeds(socket_bridge: Bridge) -> None:
    user = socket_bridge.new_user(PASSWORD)
    run = call(socket_bridge, user, "uac_auth_wait_bye")
    assert run.returncode == 0 and run.call.final_code == 200 and run.call.bye_from == "freeswitch", run.describe()
    row = judge(run, socket_bridge.dsn)
    events, audits = decisions(socket_bridge.dsn, row.call_uuid)
    assert events == [("authorized", "ok")] and audits == [], f"call_events {events}; audit_logs {audits}"


def test_user_without_call_create_is_rejected(socket_bridge: Bridge) -> None:
    with psycopg.connect(socket_bridge.dsn, autocommit=True) as conn:
        add_role(conn, "listener", ["call:read"], "may not call")
    user = socket_bridge.new_user(PASSWORD, role="listener")
    assert_refused(socket_bridge, call(socket_bridge, user, "uac_auth_refused"), "call:create")


def test_user_over_its_rate_limit_is_rejected(socket_bridge: Bridge) -> None:
    user = socket_bridge.new_user(PASSWORD)
    with psycopg.connect(socket_bridge.dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO rate_limits (user_id, endpoint, request_count, max_requests)"
                     " SELECT id, 'call', 1, 1 FROM users WHERE username = %s", (user,))
    assert_refused(socket_bridge, call(socket_bridge, user, "uac_auth_refused"), "rate limit")


def test_user_disabled_after_digest_auth_is_rejected_at_the_socket(socket_bridge: Bridge) -> None:
    user = socket_bridge.new_user(PASSWORD)
    sipp = socket_bridge.sipp("uac_auth_refused", "-key", "caller", user, "-s", "authorized_slow_tone", "-au", user,
                              "-ap", PASSWORD, "-m", "1", "-timeout", "30s", "-timeout_error",
                              target=socket_bridge.fs.internal)
    wait_for(lambda: socket_bridge.fs.channels() == 1, 10, "the authenticated call to reach the dialplan")
    done = socket_bridge.cli("user", "disable", "--realm", DOMAIN, user)
    assert done.returncode == 0, done.stdout
    assert_refused(socket_bridge, sipp.wait(), "disabled")
