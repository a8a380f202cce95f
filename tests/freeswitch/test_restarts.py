"""Restarts with calls up: FreeSWITCH crashing under the daemon, the daemon killed under FreeSWITCH.

Either way every call ends with exactly one row and a final status; calls that ended while nobody
was listening are closed as reconciled, calls that outlive the gap keep their exact times.
"""

from __future__ import annotations

import signal
import time

from tests.daemon_fixtures import wait_for
from tests.freeswitch.conftest import FIGURES, Bridge
from tests.freeswitch.landed import check, describe, row_of, rows, settled
from tests.freeswitch.sipp import Sipp


def answered_rows(dsn: str, n: int) -> bool:
    found = rows(dsn)
    return len(found) >= n and all(r.answer_time is not None for r in found)


def bridged_call(bridge: Bridge, hold_ms: int) -> tuple[Sipp, Sipp]:
    """A call bridged to a sipp UAS; the caller hangs up after hold_ms."""
    uas = bridge.sipp("uas_answer", "-m", "1", "-timeout", "60s")
    uac = bridge.sipp("uac_hangup", "-key", "caller", "alice", "-m", "1", "-d", str(hold_ms),
                      "-s", f"bridge_{uas.port}", "-timeout", "60s", "-timeout_error", target=bridge.fs.external)
    return uas, uac


def answered_while_up(bridge: Bridge, calls: tuple[Sipp, ...], what: str) -> None:
    """Until the call's Active row is in; a sipp that ends first fails at once with what it saw (a loaded
    host can take a while to set a call up: the bound is generous, the early end is what tells)."""
    def answered() -> bool:
        for call in calls:
            if call.proc.poll() is not None:
                raise AssertionError(f"{what}: sipp ended first: {call.wait().describe()}")
        return answered_rows(bridge.dsn, 1)
    wait_for(answered, 60, what)


def test_freeswitch_crash_and_restart_under_a_running_daemon(bridge: Bridge) -> None:
    fs = bridge.fs
    uas, uac = bridged_call(bridge, 60_000)
    try:
        answered_while_up(bridge, (uas, uac), "the bridged call's Active row")
        fs.kill()
        wait_for(lambda: not bridge.connected(), 30, "the daemon to notice FreeSWITCH is gone")
    finally:
        uac.kill()  # no BYE will ever come: FreeSWITCH died with the call
        uas.kill()
    fs.start()
    up = time.monotonic()
    wait_for(bridge.connected, 60, "the daemon to reconnect by itself")
    reconnected = time.monotonic() - up
    tone = bridge.sipp("uac_wait_bye", "-key", "caller", "alice", "-m", "1", "-s", "tone", "-timeout", "30s",
                       "-timeout_error", target=fs.external)
    wait_for(lambda: len(rows(bridge.dsn)) >= 2, 60, "a row for the first call after FreeSWITCH came back")
    first_row = time.monotonic() - up
    run = tone.wait()
    FIGURES.append(f"FreeSWITCH up (start returned) -> daemon reconnected: {reconnected:.2f} s, "
                   f"-> first new row: {first_row:.2f} s")
    assert bridge.proc.poll() is None, "the daemon exited instead of reconnecting"
    assert bridge.connected()
    found = settled(bridge.dsn, 2)
    told = f"sipp saw: {run.describe()}, and the first call cut by the crash; landed: {describe(found)}"
    assert len(found) == 2, told
    new = row_of(run.call, found)
    assert new is not None, told
    check(new, run.call, told)
    (old,) = [r for r in found if r is not new]
    assert old.reconciled and old.stage == 3 and old.status != "Active" and old.end_time, told


def test_daemon_killed_mid_call_and_restarted(bridge: Bridge) -> None:
    """One call ends while the daemon is dead, one outlives the gap; both end with one final row."""
    short_uas, short_uac = bridged_call(bridge, 4_000)
    wait_for(lambda: answered_rows(bridge.dsn, 1), 20, "the first call's Active row")
    long_uas, long_uac = bridged_call(bridge, 12_000)  # a second later: rows and calls pair by start time
    wait_for(lambda: answered_rows(bridge.dsn, 2), 20, "both calls' Active rows")
    bridge.proc.send_signal(signal.SIGKILL)
    bridge.proc.wait(10)
    short = short_uac.wait()  # this call ends while nobody listens
    short_uas.wait()
    bridge.start(name="b")
    long = long_uac.wait()
    long_uas.wait()
    assert short.returncode == 0 and long.returncode == 0, f"{short.describe()} / {long.describe()}"
    found = settled(bridge.dsn, 2, timeout=40)
    told = f"sipp saw: {short.describe()} and {long.describe()}; landed: {describe(found)}"
    assert len(found) == 2 and len({r.call_uuid for r in found}) == 2, told
    assert all(r.stage == 3 and r.status != "Active" for r in found), told
    ended_meanwhile = row_of(short.call, found)
    outlived = row_of(long.call, found)
    assert ended_meanwhile is not None and outlived is not None and ended_meanwhile is not outlived, told
    assert ended_meanwhile.reconciled and ended_meanwhile.status == "Completed", told
    check(outlived, long.call, told)
