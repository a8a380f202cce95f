"""The correlator: FreeSWITCH channel events in, one record per call out (DESIGN section 6).

Pure: no I/O, no wall clock (times come from the events' microsecond epoch headers). One
``Correlator`` per FreeSWITCH node: the daemon has one ESL connection per node and feeds each
node's events to that node's correlator, so UUIDs (unique per node only in theory) never meet
across nodes and every record carries its node's name.

How legs become calls
    A leg with ``variable_originator`` / ``variable_originating_leg_uuid`` (or, on
    CHANNEL_CREATE/ORIGINATE, ``Other-Type: originator``) joins its originator's call; a loopback
    ``-b`` leg joins its ``-a`` partner (``variable_other_loopback_leg_uuid``); any other leg is the
    root of a new call keyed by its UUID (``call_uuid``). A leg that arrives before its originator
    opens the call under the originator's UUID; the root's own events fill it in later.
    CHANNEL_UUID re-keys a leg; the call keeps its first key, so its rows never move.
    A bridge to a leg of another call (attended transfer) links the two calls in call_events and
    never merges them: each call closes on its own legs.

Updates
    STARTED when the root appears (again, still STARTED, when it starts ringing), ANSWERED when the
    root answers, FINISHED when the root, every known leg and every leg the root's
    ``variable_originated_legs`` names have hung up (a named leg never seen is waited for
    ``ORPHAN_GRACE_US`` of event time, then the call closes without it). Each update carries
    the full record and the lifecycle rows gathered since the previous update.

Idempotency
    A lifecycle row's ``seq`` never depends on arrival order. Rows that happen once per leg
    (created, answered, hangup) use ``2**40 + CRC32(leg UUID) * 8 + kind``, so the same row comes
    out whichever event revealed it (a lone HANGUP_COMPLETE or the full stream); the once-per-call
    reconciled row uses the call UUID's CRC the same way; rows of repeatable events (bridged,
    unbridged, transferred, uuid_changed) use ``Event-Sequence * 8 + kind`` (Event-Sequence is unique
    per event on a FreeSWITCH core). A re-delivered event is recognised by its Event-Sequence
    (per-call set of folded sequences; the rare event without one is keyed by a CRC of name, UUID
    and timestamp above 2**40) and ignored. Finished legs leave a tombstone
    (UUID -> event time, kept ``TOMBSTONE_US`` of event time, at most ``TOMBSTONE_MAX``) so a
    late duplicate never re-opens a finished call.

Resync (``resync_slices``)
    After every ESL (re)connect, against the `show channels` snapshot and this node's Active
    database rows: legs gone from the snapshot are closed at the best end known (never before
    their last known event), rows the correlator does not hold are re-adopted when their channels
    are up (their key and answer kept, their later events finish them) or closed (``Closure``,
    eslbridge.calls.reconcile), and unknown live channels are held (``_Call.provisional``): they
    write no row until their root's own event brings the exact created time, because another
    daemon or an earlier run may hold a row under that exact key and the snapshot only has the
    whole second; ``settle`` writes those still held soon after (under a stored row's key if any).
    A call keeps the start its rows were opened with as their key (``_Call.start_us``). Done in
    slices: the caller yields between them.

Memory
    Per live call: a slots object, a dict of slots legs holding only record fields (repeated
    values interned), the set of folded sequences. Measured by tests/test_correlator_memory.py
    over 10,000 concurrent two-leg calls (created, originated, answered, bridged): about
    3.2 KB (3,249 bytes) per active call (target <= 5 KB, DESIGN section 11).
"""

from __future__ import annotations

import itertools
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from functools import partial
from operator import itemgetter
from typing import Any

from eslbridge.calls.build import build_record, start_of
from eslbridge.calls.errors import EventError
from eslbridge.calls.legs import CHANNEL_EVENTS, Leg, to_datetime, to_us, usec
from eslbridge.calls.reconcile import (
    END_FROM_GAP,
    END_FROM_LAST_EVENT,
    RECONCILE_REASON,
    ActiveRow,
    Closure,
    close_row,
)
from eslbridge.calls.records import KIND, NO_SEQ_BASE, LifecycleEvent, RecordUpdate, Stage, once_seq

ORPHAN_GRACE_US = 30_000_000
TOMBSTONE_US = 3_600_000_000
TOMBSTONE_MAX = 200_000
_ADOPTED, _ROOT_GONE = 1, 2
# A call's ringing: none yet, seen (a ringing update is due), that update sent.
_NOT_RINGING, _RINGING_SEEN, _RINGING_SENT = 0, 1, 2
RESYNC_SLICE = 250  # snapshot rows, calls or Active rows per resync slice: the caller yields between slices
# `show channels` callstate values of an answered channel (switch_channel_callstate_names).
_ANSWERED_STATES = frozenset({"ACTIVE", "HELD", "UNHELD"})

_BRIDGING = {"CHANNEL_BRIDGE": "bridged", "CHANNEL_UNBRIDGE": "unbridged"}
_by_seq = itemgetter(0)
_STARTED, _ANSWERED, _FINISHED = Stage.STARTED, Stage.ANSWERED, Stage.FINISHED


class _Call:
    """State of one live call (kept small: it exists once per active call)."""

    __slots__ = (
        "adopted",
        "expected",
        "hold",
        "legs",
        "lookups",
        "pending",
        "prior_answer",
        "provisional",
        "reconciled",
        "ringing",
        "root",
        "seen",
        "sent",
        "start_us",
        "uuid",
    )

    def __init__(self, uuid: str) -> None:
        self.uuid = uuid  # call_uuid: the root's first UUID, the record's key
        self.root = uuid  # the root leg's current UUID (CHANNEL_UUID may change it)
        self.legs: dict[str, Leg] = {}
        self.seen: set[int] = set()
        self.pending: list[tuple[int, str, int, dict[str, Any]]] = []
        self.expected: tuple[str, ...] = ()
        self.lookups: dict[tuple[str, str], str | None] | None = None
        self.sent = 0  # highest Stage emitted (0: none)
        self.ringing = _NOT_RINGING
        self.hold = False  # an unlinked loopback -b leg: wait for its partner before emitting
        self.reconciled = False
        # The start its rows were opened with (0: none yet), kept for the call's life: the rows'
        # unique key is (call_uuid, start_time), and a call first seen in a `show channels`
        # snapshot only has a whole-second created time there. Its exact time arrives with its
        # own events later; the key must not move then, or the call would get a second row.
        # Kept in the correlator rather than moving the row in the writer: moving a key means
        # UPDATEs of the partition key (rows crossing partitions, call_events' foreign key
        # re-pointed) on the writer's hot path. A re-adopted call takes its row's start_time.
        self.start_us = 0
        self.prior_answer = 0  # answer time of a re-adopted call's row (its root may say nothing)
        # Opened from a snapshot row alone: its root's created time is only the whole second there,
        # and another daemon (or an earlier run) may already hold a row under the exact one. No row
        # is written until the root's own event brings the exact time (every channel event carries
        # it), or until ``settle`` (a stored row's key, else the whole second: all there ever was).
        self.provisional = False
        # Re-adopted from an Active row (the row holds what its events said before): _ADOPTED, or
        # _ROOT_GONE when the snapshot no longer had its root (it hung up unheard during the gap).
        self.adopted = 0


class Correlator:
    """Correlates one FreeSWITCH node's channel events into call records."""

    def __init__(self, node: str, lookup_user: Callable[[str, str], str | None]) -> None:
        self.node = node
        self._lookup_user = lookup_user
        self._calls: dict[str, _Call] = {}  # call_uuid -> call
        self._legs: dict[str, _Call] = {}  # leg UUID (current) -> call
        # Tombstones: finished leg UUID -> event time, oldest first. An OrderedDict because they are
        # pruned from the front on every clock advance: a plain dict's iteration start then walks
        # over every slot already deleted (O(n) per prune at 100,000 tombstones).
        self._done: OrderedDict[str, int] = OrderedDict()
        self._waiting: dict[str, int] = {}  # call_uuid -> deadline for legs named but never seen
        self._now = 0  # newest event time seen on this node (microseconds)
        # Active database rows whose channels are still up, not known otherwise (after a restart):
        # call_uuid -> (start_us, answer_us). The call's next event opens it with that state.
        self._adopted: dict[str, tuple[int, int, int]] = {}
        self._closures: list[Closure] = []  # see take_closures
        self._snapshot_row = False  # feed() is folding a `show channels` row, not a real event

    @property
    def active_calls(self) -> int:
        return len(self._calls)

    # ---------------------------------------------------------------- events

    def feed(self, event: dict[str, str]) -> list[RecordUpdate]:
        """Fold one event (a flat dict of decoded headers); returns the record updates it causes."""
        name = event.get("Event-Name")
        if name not in CHANNEL_EVENTS:
            if name == "HEARTBEAT":
                return self._advance(usec(event, "Event-Date-Timestamp"))
            return []
        uuid = event.get("Unique-ID")
        if not uuid:
            raise EventError(f"{name} without Unique-ID")
        ts = usec(event, "Event-Date-Timestamp")
        seq = _sequence(event, name, uuid, ts)
        updates = self._advance(ts) if ts > self._now else []
        if name == "CHANNEL_UUID":
            self._rekey(event.get("Old-Unique-ID"), uuid, seq, ts)
        call = self._legs.get(uuid)
        if call is None:
            if uuid in self._done:
                return updates  # a late copy of a leg whose call already finished
            call = self._attach(uuid, event)
            if call is None:
                return updates
        seen = call.seen
        if seq in seen:
            return updates  # the same event delivered twice
        seen.add(seq)
        leg = call.legs.get(uuid)
        if leg is None:
            leg = call.legs[uuid] = Leg(uuid)
        created = leg.seq < 0  # first event folded into this leg
        if created and uuid == call.uuid and call.prior_answer:
            leg.answered_us = call.prior_answer
        was_answered = leg.answered_us
        leg.fold(event, seq, name)
        leg.saw(ts)
        if created:
            _note_once(call, uuid, "created", leg.created_us or ts, _data(leg=uuid, direction=leg.direction))
        self._on_event(call, leg, name, event, seq, ts, was_answered)
        # Only a call that has emitted nothing can still join a parent (see _link_root; a held
        # call never emits), so the parent lookup is skipped for the rest of the call.
        if not call.sent and (call.uuid == uuid or call.root == uuid):
            call = self._link_root(call, leg, event)
        if self._snapshot_row:
            call.provisional = call.provisional or not call.sent
        elif call.provisional and uuid == call.root:
            call.provisional = False  # the root's own event: its exact created time is known now
        update = self._update(call)
        if update is not None:
            updates.append(update)
        return updates

    def _on_event(self, call: _Call, leg: Leg, name: str, ev: dict[str, str], seq: int, ts: int,
                  was_answered: int) -> None:
        if name == "CHANNEL_ANSWER" and not leg.answered_us:
            leg.answered_us = ts
        if leg.answered_us and not was_answered:  # whichever event first carried the answer
            _note_once(call, leg.uuid, "answered", leg.answered_us, {"leg": leg.uuid})
        handler = _HANDLERS.get(name)
        if handler is not None:
            handler(self, call, leg, name, ev, seq, ts)

    def _on_ringing(self, call: _Call, leg: Leg, name: str, ev: dict[str, str], seq: int, ts: int) -> None:
        if call.ringing == _NOT_RINGING:
            call.ringing = _RINGING_SEEN

    def _on_bridging(self, call: _Call, leg: Leg, name: str, ev: dict[str, str], seq: int, ts: int) -> None:
        other = ev.get("Other-Leg-Unique-ID")
        other_call = self._legs.get(other) if other else None
        data = _data(leg=leg.uuid, other_leg=other)
        if other_call is not None and other_call is not call:
            data["other_call"] = other_call.uuid  # attended transfer: calls linked, not merged
        _note(call, seq, _BRIDGING[name], ts, data)

    def _on_hangup(self, call: _Call, leg: Leg, name: str, ev: dict[str, str], seq: int, ts: int) -> None:
        leg.hang_up(ev, ts)
        if leg.transferred or leg.transfer_history:
            _note(call, seq, "transferred", leg.hangup_us, {"leg": leg.uuid})
        _note_once(call, leg.uuid, "hangup", leg.hangup_us,
                   _data(leg=leg.uuid, cause=leg.cause, disposition=leg.disposition))
        if leg.uuid == call.root and leg.originated_legs:
            call.expected = _originated(leg.originated_legs)

    def _attach(self, uuid: str, ev: dict[str, str]) -> _Call | None:
        """The call a newly seen leg belongs to (opening one if needed); None to drop the leg."""
        parent = _parent(ev)
        if parent is None:
            call = self._open(uuid)
            call.hold = _unlinked_loopback_b(ev)
            return call
        call = self._legs.get(parent)
        if call is None:
            if parent in self._done:  # its call already closed: this leg came too late to matter
                self._tombstone(uuid)
                return None
            call = self._open(parent)  # the originator's events have not arrived yet
        call.legs[uuid] = Leg(uuid, parent=parent)
        self._legs[uuid] = call
        return call

    def _open(self, uuid: str) -> _Call:
        call = _Call(uuid)
        adopted = self._adopted.pop(uuid, None)
        if adopted is not None:
            call.start_us, call.prior_answer, call.adopted = adopted
            call.sent = _STARTED  # its row exists: no first row to write
        self._calls[uuid] = call
        self._legs[uuid] = call
        return call

    def _link_root(self, call: _Call, leg: Leg, ev: dict[str, str]) -> _Call:
        """A root that turns out to have a parent (seen late, or a loopback -b leg) joins it."""
        parent = _parent(ev)
        if parent is None or parent == leg.uuid or call.sent:
            if call.hold and (leg.hungup or not _unlinked_loopback_b(ev)):
                call.hold = False
            return call
        target = self._legs.get(parent)
        if target is None:
            if parent in self._done:
                call.hold = False
                return call
            target = self._open(parent)
        leg.parent = parent
        for uuid, member in call.legs.items():
            target.legs[uuid] = member
            self._legs[uuid] = target
        target.seen |= call.seen
        target.pending.extend(call.pending)
        target.ringing = target.ringing or call.ringing
        del self._calls[call.uuid]
        return target

    def _rekey(self, old: str | None, new: str, seq: int, ts: int) -> None:
        call = self._legs.get(old) if old else None
        if call is None or old == new or new in self._legs:
            return
        leg = call.legs.pop(old)
        del self._legs[old]
        leg.uuid = new
        call.legs[new] = leg
        self._legs[new] = call
        if call.root == old:
            call.root = new
        _note(call, seq, "uuid_changed", ts, {"old_leg": old, "leg": new})

    # ---------------------------------------------------------------- updates

    def _update(self, call: _Call) -> RecordUpdate | None:
        """The update this call is due, if any (runs after every event: cheap when nothing changed)."""
        root = call.legs.get(call.root)
        if root is None and call.adopted == _ROOT_GONE and all(leg.hungup for leg in call.legs.values()):
            self._closures.append(self._close_adopted(call, 0, END_FROM_LAST_EVENT))
            return None
        if root is None or call.hold or ((root.seq < 0 or call.provisional) and not call.reconciled):
            return None
        for leg in call.legs.values():
            if not leg.hungup:
                break
        else:
            missing = [uuid for uuid in call.expected if uuid not in call.legs and uuid not in self._done]
            if not missing or call.reconciled:
                self._waiting.pop(call.uuid, None)
                return self._emit(call, _FINISHED)
            self._waiting.setdefault(call.uuid, self._now + ORPHAN_GRACE_US)
            return None
        if root.answered_us and call.sent < _ANSWERED:
            return self._emit(call, _ANSWERED)
        if not call.sent:
            return self._emit(call, _STARTED)
        if call.ringing == _RINGING_SEEN and call.sent == _STARTED:
            call.ringing = _RINGING_SENT
            update = self._emit(call, _STARTED)
            update.record.call_status = "ringing"
            return update
        return None

    def _emit(self, call: _Call, stage: Stage) -> RecordUpdate:
        root = call.legs[call.root]
        others = [leg for uuid, leg in call.legs.items() if uuid != call.root]
        if len(others) > 1:
            others.sort(key=_leg_order)
        if not call.start_us:
            call.start_us = start_of(root, others)
        record = build_record(call.uuid, self.node, root, others, stage == _FINISHED, partial(self._lookup, call),
                              call.start_us)
        if call.reconciled:
            record.reconciled = True
            record.reconcile_reason = RECONCILE_REASON
        if stage == _STARTED and call.ringing and not root.answered_us:
            record.call_status = "ringing"
        call.pending.sort(key=_by_seq)  # stable: rows with equal seqs keep their order
        events = [LifecycleEvent(seq, kind, to_datetime(at), data) for seq, kind, at, data in call.pending]
        call.pending = []
        if stage > call.sent:
            call.sent = stage
        if stage == _FINISHED:
            self._release(call)
        return RecordUpdate(stage, record, events)

    def _lookup(self, call: _Call, identity: tuple[str, str] | None) -> str | None:
        if identity is None:
            return None
        if call.lookups is None:
            call.lookups = {}
        if identity not in call.lookups:
            call.lookups[identity] = self._lookup_user(*identity)
        return call.lookups[identity]

    def _release(self, call: _Call) -> None:
        self._calls.pop(call.uuid, None)
        for uuid in call.legs:
            self._legs.pop(uuid, None)
            self._tombstone(uuid)
        if self._legs.get(call.uuid) is call:
            del self._legs[call.uuid]

    def _tombstone(self, uuid: str) -> None:
        self._done[uuid] = self._now
        if len(self._done) > TOMBSTONE_MAX:
            self._done.popitem(last=False)

    def evict_oldest(self, keep: int, reason: str) -> list[RecordUpdate]:
        """Close the oldest live calls until at most ``keep`` remain (the memory cap): each is finished
        now as reconciled with ``reason``, so no row stays Active; their late events find tombstones."""
        updates: list[RecordUpdate] = []
        while len(self._calls) > keep:
            call = next(iter(self._calls.values()))
            if call.root not in call.legs:
                call.legs[call.root] = Leg(call.root)
            for leg in call.legs.values():
                if not leg.hungup:
                    leg.hungup = True
                    leg.hangup_us = self._now
            call.reconciled, call.expected, call.hold = True, (), False
            self._waiting.pop(call.uuid, None)
            _note_once(call, call.uuid, "reconciled", self._now, {"reason": reason})
            update = self._update(call)
            if update is None:  # nothing to write (never expected): still free the memory
                self._release(call)
                continue
            update.record.reconcile_reason = reason
            updates.append(update)
        return updates

    def _advance(self, ts: int) -> list[RecordUpdate]:
        """Move this node's clock; close calls whose named-but-unseen legs never showed up."""
        if ts <= self._now:
            return []
        self._now = ts
        cutoff = ts - TOMBSTONE_US
        done = self._done
        while done and done[next(iter(done))] < cutoff:
            done.popitem(last=False)
        return self._expire_waiting(ts) if self._waiting else []

    def _expire_waiting(self, ts: int | None) -> list[RecordUpdate]:
        """Finish the calls whose wait for named-but-unseen legs ends by ``ts`` (None: all of them)."""
        updates: list[RecordUpdate] = []
        for call_uuid, deadline in list(self._waiting.items()):
            if ts is None or deadline <= ts:
                del self._waiting[call_uuid]
                call = self._calls.get(call_uuid)
                if call is not None:
                    call.expected = ()
                    update = self._update(call)
                    if update is not None:
                        updates.append(update)
        return updates

    # ---------------------------------------------------------------- resync

    def resync(self, channels: list[dict[str, str]], at: datetime | None = None,
               active: Iterable[ActiveRow] = (), last_event: datetime | None = None) -> list[RecordUpdate]:
        """``resync_slices`` in one go, for callers that need not yield; closures must be none."""
        updates: list[RecordUpdate] = []
        for step, closures in self.resync_slices(channels, at, active, last_event):
            if closures:
                raise EventError("resync() cannot return closures: use resync_slices()")
            updates += step
        return updates

    def resync_slices(self, channels: list[dict[str, str]], at: datetime | None = None,
                      active: Iterable[ActiveRow] = (), last_event: datetime | None = None,
                      size: int = RESYNC_SLICE, open_new: bool = True,
                      ) -> Iterator[tuple[list[RecordUpdate], list[Closure]]]:
        """Reconcile with a ``show channels as json`` snapshot taken after an ESL (re)connect.

        A generator of (record updates, closures), one item per slice of at most ``size`` rows or
        calls: the caller yields to its other work between items (a resync of 100,000 channels
        must not stall the process), and the correlator's state is consistent between them.

        ``at``: when the snapshot came (default: the newest event time seen on this node).
        ``active``: this node's Active database rows; ``last_event``: the newest event an earlier
        run stored for the node. Known legs missing from the snapshot hung up during the gap;
        Active rows unknown here whose channels are gone are closed (``Closure``); rows whose
        channels are up are re-adopted; live channels not known yet open records, unless
        ``open_new`` is false: when the Active rows could not be read, a channel may have a row
        this correlator cannot see, and its own next event (every one carries the exact created
        time) opens it under that row's key instead. Ends are the best known (see
        ``eslbridge.calls.reconcile``).
        """
        at_us = to_us(at) if at is not None else self._now
        basis = max(self._now, to_us(last_event) if last_event is not None else 0)
        end_from = END_FROM_LAST_EVENT if basis else END_FROM_GAP
        basis = basis or at_us
        live: dict[str, dict[str, str]] = {}
        live_calls: set[str] = set()
        for n, row in enumerate(channels, 1):
            uuid = row.get("uuid")
            if not uuid:
                raise EventError("channel row without uuid")
            live[uuid] = row
            live_calls.add(row.get("call_uuid") or uuid)
            if n % size == 0:
                yield [], []
        updates: list[RecordUpdate] = []
        closures: list[Closure] = []
        for n, call in enumerate(list(self._calls.values()), 1):
            update = self._resync_call(call, live, at_us, basis, end_from)
            if isinstance(update, Closure):
                closures.append(update)
            elif update is not None:
                updates.append(update)
            if n % size == 0:
                yield updates, closures
                updates, closures = [], []
        yield updates, closures
        previous, self._adopted = self._adopted, {}
        closures: list[Closure] = []
        for n, row in enumerate(active, 1):
            closure = self._sort_active(row, previous, live, live_calls, at_us, basis, end_from)
            if closure is not None:
                closures.append(closure)
            if n % size == 0:
                yield [], closures
                closures = []
        yield [], closures
        if not open_new:
            return
        # Roots first (a leg's row may come before its root's), in two passes rather than a sort:
        # sorting 100,000 rows is one step too long to take without yielding.
        roots = [row for row in live.values() if row.get("call_uuid", row["uuid"]) == row["uuid"]]
        yield [], []
        legs = [row for row in live.values() if row.get("call_uuid", row["uuid"]) != row["uuid"]]
        updates = []
        adopted = self._adopted
        for n, row in enumerate(itertools.chain(roots, legs), 1):
            uuid = row["uuid"]
            known = self._legs.get(uuid)
            # A root known only as the parent its other legs named: the snapshot is all there is of
            # it until its own events come (a daemon stopped meanwhile would have written nothing).
            unseen_root = known is not None and known.root == uuid and uuid not in known.legs
            if (known is None or unseen_root) and uuid not in self._done and uuid not in adopted \
                    and row.get("call_uuid", uuid) not in adopted:
                # Channels of a re-adopted call are left to their own events: a record built from
                # a snapshot row would overwrite the row's parties with the little the row says.
                self._snapshot_row = True
                try:
                    updates.extend(self.feed(_row_event(row, at_us)))
                finally:
                    self._snapshot_row = False
                call = self._legs.get(uuid)
                if call is not None and uuid in call.legs:
                    call.legs[uuid].seq = 0  # older than any real event: the leg's own events overwrite it
            if n % size == 0:
                yield updates, []
                updates = []
        yield updates, []

    def _resync_call(self, call: _Call, live: dict[str, dict[str, str]], at_us: int, basis: int,
                     end_from: str) -> RecordUpdate | Closure | None:
        """One known call against the snapshot: vanished legs close, answers seen only there count."""
        root = call.legs.get(call.root)
        if call.adopted and (root is None or root.seq < 0) and call.root not in live:
            return self._close_adopted(call, basis, end_from)
        if call.root not in call.legs and call.root not in live:
            call.legs[call.root] = Leg(call.root)  # a root never seen: all we know is it is gone
        for uuid, leg in call.legs.items():
            row = live.get(uuid)
            if row is None:
                if not leg.hungup:
                    leg.hungup = True
                    leg.hangup_us = max(basis, leg.latest_us)
                    call.reconciled = True
            elif not leg.answered_us and _row_answered(row) and leg.seq >= 0:
                leg.answered_us = max(at_us, leg.latest_us)  # answered during the gap: by the snapshot
                _note_once(call, uuid, "answered", leg.answered_us, {"leg": uuid})
        if call.reconciled and all(leg.hungup for leg in call.legs.values()):
            call.expected = ()
            end = max(leg.hangup_us for leg in call.legs.values())
            _note_once(call, call.uuid, "reconciled", end, {"reason": RECONCILE_REASON, "end_from": end_from})
            call.hold = False
        return self._update(call)

    def _close_adopted(self, call: _Call, basis: int, end_from: str) -> Closure:
        """A re-adopted call whose root vanished before sending anything: closed in the database,
        where the row holds the call's parties (a record built from what is known here would
        overwrite them with blanks), at the best end known: its legs' hangups, else ``basis``."""
        latest = max((max(leg.latest_us, leg.hangup_us) for leg in call.legs.values()), default=0)
        self._waiting.pop(call.uuid, None)
        self._release(call)
        self._tombstone(call.uuid)
        return close_row(ActiveRow(call.uuid, call.start_us, call.prior_answer, latest), self.node,
                         basis or latest, end_from)

    def provisional_calls(self) -> list[str]:
        """call_uuids of calls held since a snapshot, their root still silent (see ``settle``)."""
        return [uuid for uuid, call in self._calls.items() if call.provisional]

    def settle(self, rows: dict[str, int]) -> list[RecordUpdate]:
        """Write the calls still held since a snapshot: a call stays held only while its root is
        silent, and a daemon that dies meanwhile would lose it. ``rows``: call_uuid -> start_us of a
        row already stored for it (by another daemon or an earlier run), whose key it takes; a call
        without one is keyed by the snapshot's whole second, all that is known."""
        updates: list[RecordUpdate] = []
        for uuid in self.provisional_calls():
            call = self._calls[uuid]
            call.provisional = False
            stored = rows.get(uuid)
            if stored is not None:
                call.start_us = stored
                call.sent = _STARTED  # its row exists
            update = self._update(call)
            if update is not None:
                updates.append(update)
        return updates

    def close_unheard(self) -> list[RecordUpdate]:
        """Write the calls that wait for channels this run never heard: a root only ever named by
        its other legs, or legs a finished root named (``originated_legs``). Call once a resync has
        completed: a channel alive then was in the snapshot or has spoken since (its CHANNEL_CREATE
        precedes what names it), so these hung up before the subscription and nothing more of them
        will come. Held instead, the call would wait for the next resync or ``ORPHAN_GRACE_US``, and a
        daemon stopped first would lose it. A root's key is its legs' Caller-Channel-Created-Time,
        which FreeSWITCH copies from the root, so a daemon that heard the root writes the same row."""
        updates: list[RecordUpdate] = []
        for call in list(self._calls.values()):
            if call.root in call.legs or call.provisional or call.adopted:
                continue
            end = max((leg.latest_us for leg in call.legs.values()), default=self._now)
            root = call.legs[call.root] = Leg(call.root)
            root.hungup, root.hangup_us = True, end
            call.reconciled = True
            _note_once(call, call.uuid, "reconciled", end,
                       {"reason": RECONCILE_REASON, "end_from": END_FROM_LAST_EVENT})
            if all(leg.hungup for leg in call.legs.values()):
                call.expected, call.hold = (), False
            update = self._update(call)
            if update is not None:
                updates.append(update)
        return updates + self._expire_waiting(None)

    def take_closures(self) -> list[Closure]:
        """Closures that events (not a resync) made due, taken once: a re-adopted call whose root
        hung up unheard during a gap ends when its last other leg hangs up."""
        closures = self._closures
        if closures:  # per event: no new list when there is nothing to take
            self._closures = []
        return closures

    def _sort_active(self, row: ActiveRow, previous: dict[str, tuple[int, int, int]],
                     live: dict[str, dict[str, str]],
                     live_calls: set[str], at_us: int, basis: int, end_from: str) -> Closure | None:
        """An Active database row this correlator may not hold: re-adopted if up, else closed."""
        uuid = row.call_uuid
        if uuid in self._legs or uuid in self._calls or uuid in self._done:
            return None  # known here: this run's own events (or the resync above) decide
        answered = row.answered_us or previous.get(uuid, (0, 0, 0))[1]
        root = live.get(uuid)
        if root is not None and not answered and _row_answered(root):
            answered = max(at_us, row.start_us)
        if uuid in live_calls:
            self._adopted[uuid] = (row.start_us, answered, _ADOPTED if root is not None else _ROOT_GONE)
            return None
        return close_row(row, self.node, basis, end_from, answered)


# What each event name does to its call beyond folding its headers into the leg (Leg.fold).
_HANDLERS: dict[str, Callable[..., None]] = {
    "CHANNEL_PROGRESS": Correlator._on_ringing,
    "CHANNEL_PROGRESS_MEDIA": Correlator._on_ringing,
    "CHANNEL_BRIDGE": Correlator._on_bridging,
    "CHANNEL_UNBRIDGE": Correlator._on_bridging,
    "CHANNEL_HANGUP_COMPLETE": Correlator._on_hangup,
}


def _parent(ev: dict[str, str]) -> str | None:
    parent = ev.get("variable_originator") or ev.get("variable_originating_leg_uuid")
    if not parent and ev.get("Other-Type") == "originator" and ev.get("Event-Name") in (
            "CHANNEL_CREATE", "CHANNEL_ORIGINATE"):
        parent = ev.get("Other-Leg-Unique-ID")
    if not parent and ev.get("variable_loopback_leg") == "B":
        parent = ev.get("variable_other_loopback_leg_uuid")
    if parent == ev.get("Unique-ID"):
        return None
    return parent or None


def _leg_order(leg: Leg) -> tuple[int, str]:
    return leg.created_us, leg.uuid


def _originated(value: str) -> tuple[str, ...]:
    """UUIDs in ``originated_legs``: "uuid;name;number", several as FreeSWITCH's "ARRAY::a|:b"."""
    items = value[len("ARRAY::"):].split("|:") if value.startswith("ARRAY::") else [value]
    return tuple(item.split(";", 1)[0] for item in items if item)


def _unlinked_loopback_b(ev: dict[str, str]) -> bool:
    name = ev.get("Channel-Name", "")
    return name.startswith("loopback/") and name.endswith("-b") and not ev.get("variable_other_loopback_leg_uuid")


def _sequence(ev: dict[str, str], name: str, uuid: str, ts: int) -> int:
    raw = ev.get("Event-Sequence")
    if raw is None:
        return NO_SEQ_BASE + zlib.crc32(f"{name}|{uuid}|{ts}".encode())
    try:
        return int(raw)
    except ValueError:
        raise EventError(f"Event-Sequence is not a number: {raw[:40]!r}") from None


def _note(call: _Call, seq: int, kind: str, at_us: int, data: dict[str, Any]) -> None:
    """Queue the lifecycle row of a repeatable event, keyed by its Event-Sequence."""
    call.pending.append((seq * 8 + KIND[kind], kind, at_us, data))


def _note_once(call: _Call, uuid: str, kind: str, at_us: int, data: dict[str, Any]) -> None:
    """Queue a once-per-leg (or per-call) row, keyed by the UUID's CRC whichever event revealed it."""
    call.pending.append((once_seq(uuid, kind), kind, at_us, data))


def _data(**data: Any) -> dict[str, Any]:
    """Lifecycle row data without the values an event did not carry."""
    return {key: value for key, value in data.items() if value is not None}


def _row_event(row: dict[str, str], at_us: int) -> dict[str, str]:
    """A `show channels` row as the CHANNEL_CREATE-like snapshot it stands for."""
    created = row.get("created_epoch") or "0"
    if not created.isdigit():
        raise EventError(f"created_epoch is not a number: {created[:40]!r}")
    ev = {
        "Event-Name": "CHANNEL_CREATE",
        "Unique-ID": row["uuid"],
        "Event-Date-Timestamp": str(at_us),
        "Caller-Channel-Created-Time": str(int(created) * 1_000_000),
        "Call-Direction": row.get("direction", ""),
        "Channel-Name": row.get("name", ""),
        "Caller-Caller-ID-Name": row.get("cid_name", ""),
        "Caller-Caller-ID-Number": row.get("cid_num", ""),
        "Caller-Destination-Number": row.get("dest", ""),
        "variable_sip_network_ip": row.get("ip_addr", ""),
        "variable_read_codec": row.get("read_codec", ""),
    }
    if _row_answered(row):
        ev["Caller-Channel-Answered-Time"] = str(max(at_us, int(created) * 1_000_000))
    call_uuid = row.get("call_uuid")
    if call_uuid and call_uuid != row["uuid"]:
        ev["variable_originator"] = call_uuid
    return ev


def _row_answered(row: dict[str, str]) -> bool:
    """A `show channels` row of an answered channel (its callstate, or an `answered` flag)."""
    return row.get("callstate") in _ANSWERED_STATES or str(row.get("answered", "")).lower() in ("true", "1", "yes")
