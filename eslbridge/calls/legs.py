"""Per-leg state: only the fields a call record needs, folded from FreeSWITCH channel events.

Every CHANNEL_* event carries a snapshot of the channel's variables, so a leg is a fold of
snapshots: a field takes the value of the newest event (by ``Event-Sequence``) that has it, and an
older event delivered late only fills fields that are still empty. That makes the fold insensitive
to duplicates and to out-of-order delivery.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from eslbridge.calls.errors import EventError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Which channel events a field is read from: the snapshots every channel gets, and the events that can
# change it (FreeSWITCH 1.10, as the captured calls show). Reading only these is what lets intake skip the
# rest of each event undecoded (eslbridge.esl.headers); a field no read event changed is still caught by
# the channel's final HANGUP_COMPLETE, which carries every variable.
SNAPSHOTS = frozenset({"CHANNEL_CREATE", "CHANNEL_PROGRESS", "CHANNEL_PROGRESS_MEDIA", "CHANNEL_ANSWER",
                       "CHANNEL_HANGUP_COMPLETE"})
# Every channel event the correlator folds (eslbridge.calls.correlator): the loopback check and the
# caller-profile times are read from each (any of them may be the first a leg shows).
CHANNEL_EVENTS = SNAPSHOTS | {"CHANNEL_ORIGINATE", "CHANNEL_BRIDGE", "CHANNEL_UNBRIDGE", "CHANNEL_UUID"}
_UNBRIDGED = SNAPSHOTS | {"CHANNEL_UNBRIDGE"}  # the causes of the bridge's end, before the hangup's
_BRIDGED = SNAPSHOTS | {"CHANNEL_BRIDGE"}  # what the bridge application's originate left on the channel
_HANGUP = frozenset({"CHANNEL_HANGUP_COMPLETE"})  # set only when the channel ends (billsec, RTP statistics)

# (slot, header, events read from). Values are interned: the same codec, host or cause repeats across
# thousands of live legs, and one shared string costs nothing per leg.
_TEXT_FIELDS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("direction", "Call-Direction", SNAPSHOTS),
    ("channel_name", "Channel-Name", CHANNEL_EVENTS),
    ("cause", "Hangup-Cause", _UNBRIDGED),
    ("term_status", "variable_sip_term_status", _UNBRIDGED),
    ("proto_cause", "variable_proto_specific_hangup_cause", _UNBRIDGED),
    ("disposition", "variable_sip_hangup_disposition", _UNBRIDGED),
    ("originate_disposition", "variable_originate_disposition", _BRIDGED),
    ("last_app", "variable_last_app", SNAPSHOTS),
    ("last_arg", "variable_last_arg", SNAPSHOTS),
    ("call_id", "variable_sip_call_id", SNAPSHOTS),
    ("from_uri", "variable_sip_from_uri", SNAPSHOTS),
    ("from_user", "variable_sip_from_user", SNAPSHOTS),
    ("from_host", "variable_sip_from_host", SNAPSHOTS),
    ("to_uri", "variable_sip_to_uri", SNAPSHOTS),
    ("to_user", "variable_sip_to_user", SNAPSHOTS),
    ("dest", "Caller-Destination-Number", SNAPSHOTS),
    ("cid_name", "Caller-Caller-ID-Name", SNAPSHOTS),
    ("cid_num", "Caller-Caller-ID-Number", SNAPSHOTS),
    ("ip", "variable_sip_network_ip", SNAPSHOTS),
    ("sdp", "variable_switch_r_sdp", SNAPSHOTS),
    ("user_agent", "variable_sip_user_agent", SNAPSHOTS),
    ("codec", "variable_read_codec", SNAPSHOTS),
    ("authorized", "variable_sip_authorized", SNAPSHOTS),
    ("acl_authed", "variable_sip_acl_authed_by", SNAPSHOTS),
    ("user_name", "variable_user_name", SNAPSHOTS),
    ("domain_name", "variable_domain_name", SNAPSHOTS),
    ("dialed_user", "variable_dialed_user", SNAPSHOTS),
    ("dialed_domain", "variable_dialed_domain", SNAPSHOTS),
    ("billsec", "variable_billsec", _HANGUP),
    ("originated_legs", "variable_originated_legs", _BRIDGED),
    ("transfer_history", "variable_transfer_history", _UNBRIDGED),
)
_NOT_INTERNED = frozenset({"sdp", "call_id", "originated_legs", "transfer_history"})

# FreeSWITCH's RTP statistics (switch_core_media.c set_stats): name in media_info -> variable.
MEDIA_FIELDS: tuple[tuple[str, str], ...] = (
    ("mos", "variable_rtp_audio_in_mos"),
    ("quality_percentage", "variable_rtp_audio_in_quality_percentage"),
    ("jitter_min_variance", "variable_rtp_audio_in_jitter_min_variance"),
    ("jitter_max_variance", "variable_rtp_audio_in_jitter_max_variance"),
    ("jitter_loss_rate", "variable_rtp_audio_in_jitter_loss_rate"),
    ("jitter_burst_rate", "variable_rtp_audio_in_jitter_burst_rate"),
    ("packets_in", "variable_rtp_audio_in_packet_count"),
    ("packets_skipped", "variable_rtp_audio_in_skip_packet_count"),
    ("flaw_total", "variable_rtp_audio_in_flaw_total"),
    ("packets_out", "variable_rtp_audio_out_packet_count"),
)


_CREATED, _ANSWERED, _TRANSFERRED, _HUNGUP = ("Caller-Channel-Created-Time", "Caller-Channel-Answered-Time",
                                              "Caller-Channel-Transfer-Time", "Caller-Channel-Hangup-Time")
# Every header a leg reads, with the channel events it is read from: intake decodes, per event name, only
# these (with the correlator's own, eslbridge.esl.headers), so a new column is a new row in _TEXT_FIELDS
# and nothing else.
HEADERS: dict[str, frozenset[str]] = {
    **{header: events for _, header, events in _TEXT_FIELDS},
    **{header: _HANGUP for _, header in MEDIA_FIELDS},
    _CREATED: CHANNEL_EVENTS, _ANSWERED: CHANNEL_EVENTS, _TRANSFERRED: CHANNEL_EVENTS, _HUNGUP: _HANGUP,
}

_FOLD: tuple[tuple[str, str, bool, frozenset[str]], ...] = tuple(
    (slot, header, slot not in _NOT_INTERNED, events) for slot, header, events in _TEXT_FIELDS
)


def _compile_take_newest(name: str) -> Callable[[Leg, dict[str, str]], None]:
    """``take_newest(leg, ev)`` for events named `name`: every header of _TEXT_FIELDS read from them that
    the event carries overwrites its slot.

    Generated from the table as straight-line code (as dataclasses generates __init__): this runs
    for every channel event, and one ``get`` plus one comparison per header costs about half of a
    loop over the table with getattr/setattr. A value equal to the slot's keeps the slot's (already
    interned) string.
    """
    lines = ["def take_newest(leg, ev):", "    get = ev.get"]
    for slot, header, interned, events in _FOLD:
        if name in events:
            lines += [f"    value = get({header!r})",
                      f"    if value and value != leg.{slot}:",
                      f"        leg.{slot} = {'intern(value)' if interned else 'value'}"]
    namespace: dict[str, Any] = {"intern": sys.intern}
    exec(compile("\n".join(lines), f"<{__name__} take_newest {name}>", "exec"), namespace)
    return namespace["take_newest"]


_TAKE_NEWEST = {name: _compile_take_newest(name) for name in CHANNEL_EVENTS}


def usec(ev: dict[str, str], header: str) -> int:
    """A microsecond epoch header as int; 0 when absent (FreeSWITCH writes 0 for 'not yet')."""
    raw = ev.get(header)
    if not raw:
        return 0
    try:
        return int(raw)
    except ValueError:
        raise EventError(f"{header} is not a microsecond epoch: {raw[:40]!r}") from None


@lru_cache(maxsize=4096)
def to_datetime(us: int) -> datetime:
    """Microseconds since the epoch -> aware UTC datetime (exact, no float rounding).

    Cached: a call's created/answered/hangup times recur in every update's record and in its
    lifecycle rows, and a cache hit costs a fraction of building the datetime (immutable, so shared).
    """
    return _EPOCH + timedelta(0, 0, us)


def to_us(at: datetime) -> int:
    """An aware datetime -> microseconds since the epoch (exact); EventError if it is naive."""
    if at.tzinfo is None:
        raise EventError("resync time must be timezone-aware")
    delta = at - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def media_stats(ev: dict[str, str]) -> dict[str, int | float]:
    """The RTP statistics of an event, as numbers (names of MEDIA_FIELDS; unparsable values left out)."""
    stats = {}
    for name, header in MEDIA_FIELDS:
        raw = ev.get(header)
        if raw:
            value = _number(raw)
            if value is not None:
                stats[name] = value
    return stats


def _number(raw: str) -> int | float | None:
    """int when it parses as one, else float, else None (FreeSWITCH prints counts and "%f" rates)."""
    if "." not in raw:  # int() rejects every "." and a raised ValueError is costly: skip that attempt
        try:
            return int(raw)
        except ValueError:
            pass
    try:
        return float(raw)
    except ValueError:
        return None


@dataclass(slots=True, eq=False)
class Leg:
    """One FreeSWITCH channel of a call."""

    uuid: str
    seq: int = -1  # newest Event-Sequence folded in
    parent: str | None = None  # originator / loopback partner
    created_us: int = 0
    answered_us: int = 0
    hangup_us: int = 0
    # Event-Date-Timestamp of the oldest and newest event folded in: the times of a leg whose
    # events carry no Caller-Channel-*-Time (a lone HANGUP_COMPLETE of an INVITE refused at
    # digest auth), and the floor of an end a resync has to guess.
    first_us: int = 0
    last_us: int = 0
    hungup: bool = False
    transferred: bool = False
    direction: str | None = None
    channel_name: str | None = None
    cause: str | None = None
    term_status: str | None = None
    proto_cause: str | None = None
    disposition: str | None = None
    originate_disposition: str | None = None
    last_app: str | None = None
    last_arg: str | None = None
    call_id: str | None = None
    from_uri: str | None = None
    from_user: str | None = None
    from_host: str | None = None
    to_uri: str | None = None
    to_user: str | None = None
    dest: str | None = None
    cid_name: str | None = None
    cid_num: str | None = None
    ip: str | None = None
    sdp: str | None = None
    user_agent: str | None = None
    codec: str | None = None
    authorized: str | None = None
    acl_authed: str | None = None
    user_name: str | None = None
    domain_name: str | None = None
    dialed_user: str | None = None
    dialed_domain: str | None = None
    billsec: str | None = None
    originated_legs: str | None = None
    transfer_history: str | None = None
    media: dict[str, int | float] | None = None  # media_stats() of the newest event with RTP statistics

    @property
    def is_loopback(self) -> bool:
        return bool(self.channel_name) and self.channel_name.startswith("loopback/")

    def fold(self, ev: dict[str, str], seq: int, name: str) -> None:
        """Take the fields of one event snapshot named `name` (one of CHANNEL_EVENTS), those HEADERS reads
        from it: newest wins, a late older one only fills gaps."""
        newer = seq >= self.seq
        if newer:
            self.seq = seq
            _TAKE_NEWEST[name](self, ev)
        else:
            for slot, header, interned, events in _FOLD:
                if name in events:
                    value = ev.get(header)
                    if value and getattr(self, slot) is None:
                        setattr(self, slot, sys.intern(value) if interned else value)
        # FreeSWITCH writes "0" for a time not reached yet (most of these, on most events): that
        # case skips usec's call and parse, a tenth of the correlator's time when profiled.
        get = ev.get
        if get(_CREATED, "0") != "0":
            created = usec(ev, _CREATED)
            if created and (newer or not self.created_us):
                self.created_us = created
        if get(_ANSWERED, "0") != "0":
            answered = usec(ev, _ANSWERED)
            # The earliest wins: a snapshot can only say "answered by now", the channel's own
            # events say exactly when.
            if answered and (not self.answered_us or answered < self.answered_us):
                self.answered_us = answered
        if get(_TRANSFERRED, "0") != "0" and usec(ev, _TRANSFERRED):
            self.transferred = True
        if name in _HANGUP and "variable_rtp_audio_in_mos" in ev and (newer or self.media is None):
            self.media = media_stats(ev)

    def saw(self, ts: int) -> None:
        """Note the Event-Date-Timestamp of an event folded into this leg."""
        if ts:
            if not self.first_us or ts < self.first_us:
                self.first_us = ts
            if ts > self.last_us:
                self.last_us = ts

    @property
    def latest_us(self) -> int:
        """The newest time known of this leg: no end a resync guesses may come before it."""
        return max(self.created_us, self.answered_us, self.last_us)

    def hang_up(self, ev: dict[str, str], at_us: int) -> None:
        self.hungup = True
        self.hangup_us = usec(ev, _HUNGUP) or at_us
