"""Resync against snapshots and the database's Active rows; event shapes without channel times.

Pure correlator tests on the real bridge-answer capture (A 0f67..., B 41d1...): the keys rows are
written under, re-adoption, closures of stale rows, and ends that never come before what is known.
"""

from __future__ import annotations

from eslbridge.calls.build import INT4_MAX
from eslbridge.calls.correlator import Correlator
from eslbridge.calls.reconcile import STALE_REASON, ActiveRow, Closure
from eslbridge.calls.records import Stage
from tests.correlator_fixtures import LOCAL_USERS, NODE, at, call_events, captured, lookup_factory, only, truth

CREATED_US = 1795299165133619  # the A-leg's Caller-Channel-Created-Time in the capture


def bridge_answer():
    facts = truth("bridge-answer")["calls"][0]
    return call_events(captured("bridge-answer", "minimal.json")), facts["a_leg_uuid"], facts["legs"][1]["uuid"]


def snapshot_rows(a: str, b: str, callstate: str = "ACTIVE") -> list[dict[str, str]]:
    """`show channels as json` rows of the capture's two legs, as FreeSWITCH lists them mid-call."""
    common = {"direction": "inbound", "created_epoch": str(CREATED_US // 1_000_000), "callstate": callstate,
              "read_codec": "PCMU", "call_uuid": a}
    return [dict(common, uuid=a, name="sofia/internal/1000@127.0.0.1", cid_num="1000", dest="bridge"),
            dict(common, uuid=b, direction="outbound", name="sofia/external/uas@127.0.0.1:5070")]


def new_correlator() -> Correlator:
    return Correlator(NODE, lookup_factory(LOCAL_USERS))


def slices(correlator: Correlator, *args, **kwargs) -> tuple[list, list[Closure]]:
    updates, closures = [], []
    for step, closed in correlator.resync_slices(*args, **kwargs):
        updates += step
        closures += closed
    return updates, closures


def test_a_call_known_only_from_a_snapshot_is_keyed_by_its_own_exact_start():
    """A call first seen in a snapshot (whole-second created time) writes no row until its root's
    own event brings the exact created time: another daemon, or an earlier run, may already hold
    a row under that exact key, and a whole-second key would make it a second row."""
    events, a, b = bridge_answer()
    correlator = new_correlator()
    assert correlator.resync(snapshot_rows(a, b), at=at(1795299166_500000)) == []
    assert correlator.active_calls == 1  # held, waiting for the root's own event
    later = [u for e in events for u in correlator.feed(e)]
    assert later and later[-1].stage == Stage.FINISHED and correlator.active_calls == 0
    assert {(u.record.call_uuid, u.record.start_time) for u in later} == {(a, at(CREATED_US))}
    record = later[-1].record
    assert record.status == "Completed" and not record.reconciled
    hangup = only(events, "CHANNEL_HANGUP_COMPLETE", a)
    assert record.total_duration_ms == (int(hangup["Caller-Channel-Hangup-Time"]) - CREATED_US) // 1000


def test_a_snapshot_only_call_that_vanishes_is_closed_under_the_whole_second():
    """Seen in one snapshot, gone by the next, no event ever: the whole second is all there was."""
    _events, a, b = bridge_answer()
    correlator = new_correlator()
    correlator.resync(snapshot_rows(a, b), at=at(1795299166_500000))
    closed = correlator.resync([], at=at(1795299170_000000))
    assert [u.stage for u in closed] == [Stage.FINISHED]
    record = closed[-1].record
    assert record.reconciled and record.start_time == at(CREATED_US // 1_000_000 * 1_000_000)
    assert record.total_duration_ms >= 0


def test_an_active_row_whose_channels_are_up_is_readopted_under_its_key():
    """After a restart: the row stays as it is (no update from the snapshot), and the call's own
    later events finish it with exact times under the row's key and answer."""
    events, a, b = bridge_answer()
    answered = int(only(events, "CHANNEL_ANSWER", a)["Caller-Channel-Answered-Time"])
    row = ActiveRow(a, CREATED_US, answered, answered)
    correlator = new_correlator()
    updates, closures = slices(correlator, snapshot_rows(a, b), at(1795299168_000000), [row])
    assert updates == [] and closures == []
    hangups = [e for e in events if e["Event-Name"] in ("CHANNEL_HANGUP_COMPLETE", "CHANNEL_UNBRIDGE")]
    done = [u for e in hangups for u in correlator.feed(e)]
    assert done[-1].stage == Stage.FINISHED and correlator.active_calls == 0
    assert {(u.record.call_uuid, u.record.start_time) for u in done} == {(a, at(CREATED_US))}
    record = done[-1].record
    assert (record.call_uuid, record.start_time) == (a, at(CREATED_US))
    assert record.answer_time == at(answered) and record.status == "Completed" and not record.reconciled
    assert record.end_time == at(only(events, "CHANNEL_HANGUP_COMPLETE", a)["Caller-Channel-Hangup-Time"])


def test_a_readopted_row_keeps_the_key_it_was_written_with():
    """A row an earlier run opened from a snapshot (whole second) keeps that start as its key."""
    events, a, b = bridge_answer()
    rounded = CREATED_US // 1_000_000 * 1_000_000
    correlator = new_correlator()
    slices(correlator, snapshot_rows(a, b), at(1795299168_000000), [ActiveRow(a, rounded, 0, 0)])
    done = [u for e in events for u in correlator.feed(e)]
    assert {u.record.start_time for u in done} == {at(rounded)} and done[-1].stage == Stage.FINISHED


def test_active_rows_whose_channels_are_gone_are_closed_never_before_their_last_event():
    correlator = new_correlator()
    start, answer, last = 1795299000_000000, 1795299002_000000, 1795299010_000000
    rows = [ActiveRow("gone-answered", start, answer, last), ActiveRow("gone-ringing", start, 0, start)]
    stored_last = at(1795299005_000000)  # the node's newest stored event is older than one row's own
    updates, closures = slices(correlator, [], at(1795299100_000000), rows, last_event=stored_last)
    assert updates == []
    by_uuid = {c.call_uuid: c for c in closures}
    answered, ringing = by_uuid["gone-answered"], by_uuid["gone-ringing"]
    assert answered.end_time == at(last)  # floored at the row's own last event
    assert (answered.status, answered.call_status) == ("Completed", "completed")
    assert answered.call_duration_ms == 8_000 and answered.total_duration_ms == 10_000
    assert ringing.end_time == stored_last and ringing.status == "Failed" and ringing.total_duration_ms == 5_000
    assert ringing.event.event_type == "reconciled"
    assert ringing.event.data == {"reason": STALE_REASON, "end_from": "last_event"}


def test_without_any_known_event_the_end_is_when_the_gap_was_detected():
    correlator = new_correlator()
    row = ActiveRow("gone", 1795299000_000000, 0, 0)
    _, closures = slices(correlator, [], at(1795299100_000000), [row])
    assert closures[0].end_time == at(1795299100_000000)
    assert closures[0].event.data["end_from"] == "gap_detected"


def test_rows_the_correlator_holds_are_left_to_it():
    events, a, b = bridge_answer()
    correlator = new_correlator()
    for e in events[:3]:
        correlator.feed(e)
    _, closures = slices(correlator, snapshot_rows(a, b), at(1795299168_000000), [ActiveRow(a, CREATED_US, 0, 0)])
    assert closures == [] and correlator.active_calls == 1


def test_a_call_seen_only_in_snapshots_takes_its_answer_from_them_and_never_ends_early():
    """Seen in one snapshot answered, gone in the next: Completed, end after its start, not negative."""
    correlator = new_correlator()
    row = {"uuid": "only-snap", "direction": "inbound", "created_epoch": "1795299200", "callstate": "ACTIVE",
           "call_uuid": "only-snap", "cid_num": "1000", "dest": "1001"}
    correlator.feed({"Event-Name": "HEARTBEAT", "Event-Date-Timestamp": "1795299100000000"})  # an older node clock
    assert correlator.resync([row], at=at(1795299207_000000)) == []  # held: no exact start yet
    closed = correlator.resync([], at=at(1795299300_000000))
    record = closed[0].record
    assert record.answer_time == at(1795299207_000000)
    assert record.status == "Completed" and record.reconciled
    assert record.end_time >= record.answer_time >= record.start_time
    assert record.total_duration_ms >= 0 and record.call_duration_ms >= 0


def test_a_known_leg_answered_during_the_gap_takes_the_snapshot_answer():
    events, a, b = bridge_answer()
    correlator = new_correlator()
    for e in events[:3]:  # created, never answered as far as the events go
        correlator.feed(e)
    answered = correlator.resync(snapshot_rows(a, b), at=at(1795299168_000000))
    assert answered[-1].stage == Stage.ANSWERED and answered[-1].record.answer_time == at(1795299168_000000)
    closed = correlator.resync([], at=at(1795299170_000000))
    assert closed[-1].record.status == "Completed" and closed[-1].record.call_duration_ms >= 0


def test_lone_hangup_complete_without_channel_times_uses_its_own_timestamp():
    """An INVITE refused at digest auth: FreeSWITCH sends only CHANNEL_HANGUP_COMPLETE, with no
    Caller-Channel-*-Time headers. Its times come from Event-Date-Timestamp; nothing overflows."""
    hangup = only(captured("auth-call", "minimal.json"), "CHANNEL_HANGUP_COMPLETE")
    refused = {k: v for k, v in hangup.items() if not k.startswith("Caller-Channel-") or not k.endswith("-Time")}
    refused.update({"Hangup-Cause": "CALL_REJECTED", "variable_sip_term_status": "407", "variable_billsec": "0"})
    refused.pop("variable_originated_legs", None)
    record = [u for u in new_correlator().feed(refused)][-1].record
    ts = at(refused["Event-Date-Timestamp"])
    assert record.start_time == ts and record.end_time == ts
    assert record.total_duration_ms == 0 and record.call_duration_ms == 0 and record.answer_time is None


def test_durations_are_clamped_to_their_int4_columns():
    events, a, _ = bridge_answer()
    far = int(only(events, "CHANNEL_HANGUP_COMPLETE", a)["Caller-Channel-Hangup-Time"]) + 40 * 86_400_000_000
    stretched = [dict(e, **{"Caller-Channel-Hangup-Time": str(far), "variable_billsec": "99999999999"})
                 if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE" else e for e in events]
    correlator = new_correlator()
    record = [u for e in stretched for u in correlator.feed(e)][-1].record
    assert record.total_duration_ms == INT4_MAX and record.call_duration_ms == INT4_MAX
    assert record.duration_seconds == INT4_MAX


def test_resync_comes_in_slices():
    correlator = new_correlator()
    rows = [{"uuid": f"u{i}", "created_epoch": "1795299200", "call_uuid": f"u{i}"} for i in range(250)]
    steps = list(correlator.resync_slices(rows, at(1795299201_000000), size=100))
    assert len(steps) >= 6  # the rows read, then opened, a hundred at a time
    assert max(len(updates) for updates, _ in steps) <= 100
    assert sum(len(updates) for updates, _ in steps) == 0 and correlator.active_calls == 250  # held
    steps = list(correlator.resync_slices([], at(1795299300_000000), size=100))
    assert max(len(updates) for updates, _ in steps) <= 100
    assert sum(len(updates) for updates, _ in steps) == 250 and correlator.active_calls == 0


def test_a_readopted_call_whose_root_never_spoke_is_closed_in_the_database_not_blanked():
    """Re-adopted, only its B-leg's hangup seen, then gone: a Closure (the row keeps its parties),
    not a record built from a root the correlator knows nothing about."""
    events, a, b = bridge_answer()
    correlator = new_correlator()
    slices(correlator, snapshot_rows(a, b), at(1795299168_000000), [ActiveRow(a, CREATED_US, 0, 0)])
    assert correlator.feed(only(events, "CHANNEL_HANGUP_COMPLETE", b)) == []
    updates, closures = slices(correlator, [], at(1795299175_000000), [ActiveRow(a, CREATED_US, 0, 0)])
    assert updates == [] and [c.call_uuid for c in closures] == [a] and correlator.active_calls == 0
    b_hangup = int(only(events, "CHANNEL_HANGUP_COMPLETE", b)["Event-Date-Timestamp"])
    assert closures[0].end_time >= at(b_hangup) and closures[0].start_time == at(CREATED_US)


def test_a_readopted_call_whose_root_hung_up_unheard_ends_with_its_last_leg():
    """After a restart the snapshot lists only the B-leg (the A-leg hung up during the gap): the
    row is re-adopted, and the B-leg's own hangup closes it at that exact time (a Closure, taken
    by the daemon after the event), with nothing left in memory."""
    events, a, b = bridge_answer()
    answered = int(only(events, "CHANNEL_ANSWER", a)["Caller-Channel-Answered-Time"])
    correlator = new_correlator()
    b_only = [row for row in snapshot_rows(a, b) if row["uuid"] == b]
    updates, closures = slices(correlator, b_only, at(1795299168_000000), [ActiveRow(a, CREATED_US, answered, 0)])
    assert updates == [] and closures == [] and correlator.take_closures() == []
    b_hangup = only(events, "CHANNEL_HANGUP_COMPLETE", b)
    assert correlator.feed(b_hangup) == []
    closed = correlator.take_closures()
    assert [c.call_uuid for c in closed] == [a] and correlator.active_calls == 0
    assert closed[0].end_time == at(b_hangup["Caller-Channel-Hangup-Time"]) and closed[0].status == "Completed"
    assert closed[0].event.data["end_from"] == "last_event" and correlator.take_closures() == []


def test_calls_still_held_are_settled_under_a_stored_key_or_the_whole_second():
    """A held call whose root stays silent is written soon after all the same (a daemon dying
    meanwhile would lose it): under the key of a row another daemon stored, else the whole second."""
    _events, a, b = bridge_answer()
    correlator = new_correlator()
    other = {"uuid": "only-snap", "direction": "inbound", "created_epoch": "1795299200", "callstate": "RINGING",
             "call_uuid": "only-snap"}
    correlator.resync([*snapshot_rows(a, b), other], at=at(1795299201_000000))
    assert sorted(correlator.provisional_calls()) == sorted([a, "only-snap"])
    settled = correlator.settle({a: CREATED_US})
    assert correlator.provisional_calls() == [] and correlator.settle({}) == []
    keys = {u.record.call_uuid: u.record.start_time for u in settled}
    # `a` has a stored row: it takes that key (and only its answer, from the snapshot, is updated).
    assert keys == {a: at(CREATED_US), "only-snap": at(1795299200_000000)}


def test_a_root_known_only_as_its_legs_parent_is_taken_from_the_snapshot():
    """The B leg's event came before the snapshot (its call opened under the root's UUID, the root
    itself never seen): the snapshot's row of the root fills it in, so the call is held and settled
    like any call known only from a snapshot, instead of waiting in memory for the root's events
    (a daemon stopped before they come would have written nothing)."""
    events, a, b = bridge_answer()
    correlator = new_correlator()
    b_event = next(e for e in events if e["Unique-ID"] == b)
    assert correlator.feed(b_event) == [] and correlator.provisional_calls() == []
    assert correlator.resync(snapshot_rows(a, b), at=at(1795299166_500000)) == []
    assert correlator.provisional_calls() == [a]
    settled = correlator.settle({})
    assert [(u.stage, u.record.call_uuid, u.record.start_time) for u in settled][:1] == [
        (Stage.ANSWERED, a, at(CREATED_US // 1_000_000 * 1_000_000))]
    later = [u for e in events for u in correlator.feed(e)]
    assert later[-1].stage == Stage.FINISHED and later[-1].record.status == "Completed"


def test_a_call_whose_root_hung_up_before_the_subscription_is_written_not_held():
    """Only the B leg is heard (the A leg hung up before the subscription, so no snapshot lists
    it): once the resync is done the call is written, reconciled, under the A leg's exact created
    time that the B leg carries; nothing is left waiting for a root that cannot speak."""
    events, a, b = bridge_answer()
    correlator = new_correlator()
    assert correlator.resync([], at=at(1795299166_000000)) == []
    b_events = [e for e in events if e.get("Unique-ID") == b]
    assert [u for e in b_events for u in correlator.feed(e)] == []  # held: its root never spoke
    updates = correlator.close_unheard()
    assert [(u.stage, u.record.call_uuid, u.record.start_time) for u in updates] == [
        (Stage.FINISHED, a, at(CREATED_US))]
    record = updates[0].record
    assert record.reconciled and record.end_time >= at(b_events[-1]["Event-Date-Timestamp"])
    assert correlator.active_calls == 0 and correlator.close_unheard() == []


def test_a_call_whose_root_is_only_named_keeps_its_later_legs_events():
    """Written while its B leg is still up, the call stays open (Active) and the B leg's own
    hangup finishes it with that exact time."""
    events, a, b = bridge_answer()
    correlator = new_correlator()
    b_events = [e for e in events if e.get("Unique-ID") == b]
    hangup = next(i for i, e in enumerate(b_events) if e["Event-Name"] == "CHANNEL_HANGUP_COMPLETE")
    assert [u for e in b_events[:hangup] for u in correlator.feed(e)] == []
    opened = correlator.close_unheard()
    assert [u.stage for u in opened] == [Stage.STARTED] and opened[0].record.start_time == at(CREATED_US)
    later = [u for e in b_events[hangup:] for u in correlator.feed(e)]
    assert later[-1].stage == Stage.FINISHED and later[-1].record.call_uuid == a
    b_hangup = only(events, "CHANNEL_HANGUP_COMPLETE", b)
    assert later[-1].record.end_time == at(b_hangup["Caller-Channel-Hangup-Time"])


def test_a_lone_hangup_complete_naming_legs_never_heard_is_written_once_resynced():
    """Only the A leg's HANGUP_COMPLETE arrives (every earlier event, the B leg's included, went
    before the subscription): it names the B leg in originated_legs, which can no longer come, so
    once the resync is done the call is written with what the A leg says (busy), not held."""
    facts = truth("bridge-busy")["calls"][0]
    a = facts["a_leg_uuid"]
    events = call_events(captured("bridge-busy", "minimal.json"))
    correlator = new_correlator()
    assert correlator.resync([], at=at(1795299188_000000)) == []
    hangup = only(events, "CHANNEL_HANGUP_COMPLETE", a)
    assert hangup.get("variable_originated_legs") and correlator.feed(hangup) == []
    updates = correlator.close_unheard()
    assert [(u.stage, u.record.call_uuid) for u in updates] == [(Stage.FINISHED, a)]
    assert updates[0].record.status == "Busy" and correlator.active_calls == 0
