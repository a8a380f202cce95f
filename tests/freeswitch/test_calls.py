"""Real calls through FreeSWITCH's test extensions; each row is judged by what sipp saw."""

from __future__ import annotations

import time

import pytest

from tests.daemon_fixtures import wait_for
from tests.freeswitch.conftest import Bridge
from tests.freeswitch.landed import describe, judge, rows

CALLER = ["-key", "caller", "alice", "-m", "1", "-timeout", "40s", "-timeout_error"]


@pytest.fixture(params=["json", "plain"])
def event_format(request: pytest.FixtureRequest) -> str:
    """Every call of this module in both of FreeSWITCH's event formats: the plain decoder has fast paths
    of its own, proved here on what a real FreeSWITCH sends."""
    return request.param


def test_answered_call_to_a_tone_is_completed_with_freeswitch_hanging_up(bridge: Bridge) -> None:
    run = bridge.sipp("uac_wait_bye", *CALLER, "-s", "tone", target=bridge.fs.external).wait()
    assert run.returncode == 0 and run.call.final_code == 200 and run.call.bye_from == "freeswitch", run.describe()
    row = judge(run, bridge.dsn)
    assert row.disconnect_reason == "NORMAL_CLEARING", row.describe()


def test_bridged_call_answered_by_a_sipp_uas_is_completed(bridge: Bridge) -> None:
    uas = bridge.sipp("uas_answer", "-m", "1", "-timeout", "40s")
    run = bridge.sipp("uac_hangup", *CALLER, "-d", "1500", "-s", f"bridge_{uas.port}", target=bridge.fs.external).wait()
    far = uas.wait()
    assert run.returncode == 0 and run.call.bye_from == "sipp", run.describe()
    assert far.returncode == 0 and far.call.bye_from == "freeswitch", far.describe()
    row = judge(run, bridge.dsn)
    assert row.disconnect_reason == "NORMAL_CLEARING", row.describe()


def test_busy_callee_gives_busy(bridge: Bridge) -> None:
    uas = bridge.sipp("uas_busy", "-m", "1", "-timeout", "40s")
    run = bridge.sipp("uac_refused", *CALLER, "-s", f"bridge_{uas.port}", target=bridge.fs.external).wait()
    uas.wait()
    assert run.returncode == 0 and run.call.final_code == 486, run.describe()
    assert judge(run, bridge.dsn).disconnect_reason == "USER_BUSY"


def test_unanswered_call_times_out_as_no_answer(bridge: Bridge) -> None:
    uas = bridge.sipp("uas_ring", "-m", "1", "-timeout", "40s")
    run = bridge.sipp("uac_refused", *CALLER, "-s", f"bridge_short_{uas.port}", target=bridge.fs.external).wait()
    uas.wait()
    assert run.returncode == 0 and run.call.final_code == 480, run.describe()
    judge(run, bridge.dsn)


@pytest.mark.parametrize(("destination", "code"), [("reject", 403), ("decline", 603)])
def test_dialplan_reject_and_decline_are_rejected(bridge: Bridge, destination: str, code: int) -> None:
    run = bridge.sipp("uac_refused", *CALLER, "-s", destination, target=bridge.fs.external).wait()
    assert run.returncode == 0 and run.call.final_code == code, run.describe()
    assert judge(run, bridge.dsn).disconnect_reason == "CALL_REJECTED"


def test_caller_cancel_while_ringing_is_cancelled(bridge: Bridge) -> None:
    uas = bridge.sipp("uas_ring", "-m", "1", "-timeout", "40s")
    run = bridge.sipp("uac_cancel", *CALLER, "-d", "1000", "-s", f"bridge_{uas.port}", target=bridge.fs.external).wait()
    uas.wait()
    assert run.returncode == 0 and run.call.cancelled and run.call.final_code == 487, run.describe()
    assert judge(run, bridge.dsn).disconnect_reason == "ORIGINATOR_CANCEL"


def test_call_refused_before_any_channel_leaves_no_row(bridge: Bridge) -> None:
    """An INVITE without credentials on the internal profile is challenged: no channel, no call
    while the challenge is pending. FreeSWITCH keeps a session (CS_NEW, not in `show channels`)
    for the authenticated retry, and abandons it 10 s later with a lone CHANNEL_HANGUP_COMPLETE
    (WRONG_CALL_STATE): that ended session is recorded as a failed, never answered call."""
    run = bridge.sipp("uac_refused", *CALLER, "-s", "tone", target=bridge.fs.internal).wait()
    assert run.returncode == 0 and run.call.final_code == 407, run.describe()
    assert bridge.fs.channels() == 0
    time.sleep(2)  # give a wrongly written row time to land
    assert rows(bridge.dsn) == [], f"sipp saw: {run.describe()}; landed: {describe(rows(bridge.dsn))}"
    wait_for(lambda: bridge.fs.sessions() == 0, 20, "FreeSWITCH to abandon the challenged session")
    wait_for(lambda: rows(bridge.dsn), 10, "the abandoned session's row")
    found = rows(bridge.dsn)
    told = f"sipp saw: {run.describe()}; landed: {describe(found)}"
    assert len(found) == 1 and found[0].status == "Failed" and found[0].answer_time is None, told
    assert found[0].disconnect_reason == "WRONG_CALL_STATE" and found[0].total_duration_ms >= 0, told


def test_loopback_bridge_is_one_completed_call(bridge: Bridge) -> None:
    run = bridge.sipp("uac_wait_bye", *CALLER, "-s", "loopback", target=bridge.fs.external).wait()
    assert run.returncode == 0 and run.call.final_code == 200 and run.call.bye_from == "freeswitch", run.describe()
    judge(run, bridge.dsn)


def test_bgapi_originate_without_inbound_leg_is_completed(bridge: Bridge) -> None:
    uas = bridge.sipp("uas_answer", "-m", "1", "-timeout", "40s")
    reply = bridge.fs.api(f"bgapi originate sofia/external/uas@127.0.0.1:{uas.port} &playback(tone_stream://%(1500,0,440))")
    far = uas.wait()
    assert "Job-UUID" in reply, reply
    assert far.returncode == 0 and far.call.final_code == 200 and far.call.bye_from == "freeswitch", far.describe()
    judge(far, bridge.dsn)
