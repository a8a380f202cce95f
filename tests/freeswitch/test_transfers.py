"""Transfers never lose a call: each call has its row, the link is in call_events, nothing stays Active."""

from __future__ import annotations

from urllib.parse import quote

import psycopg

from tests.daemon_fixtures import wait_for
from tests.freeswitch.conftest import Bridge
from tests.freeswitch.landed import check, describe, row_of, settled


def event_types(dsn: str) -> dict[str, list[str]]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT call_uuid, event_type FROM call_events ORDER BY id").fetchall()
    by_call: dict[str, list[str]] = {}
    for call_uuid, event_type in found:
        by_call.setdefault(call_uuid, []).append(event_type)
    return by_call


def test_blind_transfer_by_refer_from_the_b_side(bridge: Bridge) -> None:
    """B answers, then REFERs the caller to the tone extension: one call, transferred, then completed."""
    uas = bridge.sipp("uas_refer_blind", "-aa", "-s", "tone", "-m", "1", "-timeout", "40s")
    run = bridge.sipp("uac_wait_bye", "-key", "caller", "alice", "-aa", "-m", "1", "-s", f"bridge_{uas.port}",
                      "-timeout", "40s", "-timeout_error", target=bridge.fs.external).wait()
    far = uas.wait()
    saw = f"caller: {run.describe()}; transferor: {far.describe()}"
    assert run.returncode == 0 and run.call.final_code == 200 and run.call.bye_from == "freeswitch", saw
    assert far.returncode == 0 and far.call.bye_from == "freeswitch", saw
    found = settled(bridge.dsn, 1)
    events = event_types(bridge.dsn)
    told = f"sipp saw: {saw}; landed: {describe(found)}; call_events {events}"
    assert len(found) == 1, told
    check(found[0], run.call, told)
    assert "transferred" in events.get(found[0].call_uuid, []), told


def test_attended_transfer_by_refer_with_replaces(bridge: Bridge) -> None:
    """A calls B; B consults C on a second call; B REFERs A to that call (Replaces): A and C talk.

    Two calls, each with its own row, both final, linked in call_events; nothing left Active.
    """
    dialog_file = bridge.env.tmp / "consultation-dialog"
    c = bridge.sipp("uas_answer", "-m", "1", "-timeout", "40s")
    consult = bridge.sipp("uac_consult", "-key", "caller", "bob", "-key", "dialog_file", str(dialog_file), "-aa",
                          "-m", "1", "-s", f"bridge_{c.port}", "-timeout", "40s", "-timeout_error",
                          target=bridge.fs.external)
    wait_for(lambda: dialog_file.exists() and dialog_file.read_text().strip(), 20, "the consultation call's answer")
    replaces = quote(dialog_file.read_text().strip(), safe="")
    b = bridge.sipp("uas_refer_attended", "-aa", "-key", "replaces", replaces, "-s", "consult", "-m", "1",
                    "-timeout", "40s")
    a = bridge.sipp("uac_hangup", "-key", "caller", "alice", "-aa", "-d", "4000", "-m", "1", "-s", f"bridge_{b.port}",
                    "-timeout", "40s", "-timeout_error", target=bridge.fs.external).wait()
    runs = {"A": a, "B": b.wait(), "B-consult": consult.wait(), "C": c.wait()}
    saw = "; ".join(f"{who}: {run.describe()}" for who, run in runs.items())
    assert all(run.returncode == 0 for run in runs.values()), saw
    assert a.call.bye_from == "sipp" and runs["C"].call.bye_from == "freeswitch", saw  # A hung up on C
    assert runs["B"].call.bye_from == "freeswitch" and runs["B-consult"].call.bye_from == "freeswitch", saw
    found = settled(bridge.dsn, 2)
    events = event_types(bridge.dsn)
    told = f"sipp saw: {saw}; landed: {describe(found)}; call_events {events}"
    assert len(found) == 2 and all(r.stage == 3 and r.status == "Completed" for r in found), told
    first, second = row_of(a.call, found), row_of(runs["B-consult"].call, found)
    assert first is not None and second is not None and first is not second, told
    linked = [t for t in events.get(first.call_uuid, []) + events.get(second.call_uuid, []) if t == "bridged"]
    assert linked, told
    with psycopg.connect(bridge.dsn) as conn:
        links = conn.execute("SELECT count(*) FROM call_events WHERE event_data->>'other_call' IN (%s, %s)",
                             (first.call_uuid, second.call_uuid)).fetchone()[0]
    assert links >= 1, f"no call_events row links the two calls; {told}"
