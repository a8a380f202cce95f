"""RecordUpdate -> encrypted rows for call_records, calls and call_events (DESIGN sections 6-8).

Personal fields (SIP URIs, numbers, caller ID, IPs, SDPs, the SIP Call-ID) become OpenPGP
messages under the keyring's active key; URIs, numbers and the SIP Call-ID also get blind indexes
(``*_hash``) so a call is found by number without decrypting. Everything else is stored as is.
The column lists here are the single source for the SQL in ``eslbridge.store.upsert``.

``calls.destination_number_hash`` holds the ``number`` index of the dialed number, or the ``uri``
index of the callee URI when no number is known; the kind is part of the MAC, so a search by
number never matches a URI-derived hash by accident.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from operator import itemgetter
from typing import Any

from psycopg.types.json import Jsonb

from eslbridge.calls.records import CallRecord, RecordUpdate
from eslbridge.keys.keyring import Keyring
from eslbridge.store.serialize import json_bytes


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    pg_type: str  # what the value is cast to / the COPY type
    personal: bool = False  # encrypted: compared by length only when deciding whether a row changed


@dataclass(frozen=True, slots=True)
class TableSpec:
    """Which columns a writer sets in one table, and its idempotency key."""

    name: str
    key: tuple[str, ...]
    columns: tuple[Column, ...]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def types(self) -> list[str]:
        return [c.pg_type for c in self.columns]


def _cols(spec: str, personal: frozenset[str] = frozenset()) -> tuple[Column, ...]:
    return tuple(Column(n, t, n in personal) for n, t in (item.split(":") for item in spec.split()))


CALL_RECORDS = TableSpec(
    "call_records",
    key=("call_uuid", "start_time"),
    columns=_cols(
        "call_uuid:varchar node:varchar call_id:varchar call_id_enc:bytea call_id_hash:bytea "
        "caller:bytea callee:bytea caller_hash:bytea "
        "callee_hash:bytea caller_number_hash:bytea callee_number_hash:bytea caller_ip:bytea callee_ip:bytea "
        "direction:varchar start_time:timestamptz answer_time:timestamptz end_time:timestamptz "
        "setup_duration_ms:int4 call_duration_ms:int4 total_duration_ms:int4 status:varchar "
        "disconnect_reason:text codec:varchar caller_sdp:bytea callee_sdp:bytea caller_user_agent:text "
        "callee_user_agent:text media_info:jsonb sip_response_code:int4 user_id:uuid enc_key_id:int4 "
        "reconciled:bool stage:int2",
        frozenset({"call_id_enc", "caller", "callee", "caller_ip", "callee_ip", "caller_sdp", "callee_sdp"}),
    ),
)

CALLS = TableSpec(
    "calls",
    key=("call_uuid", "initiated_at"),
    columns=_cols(
        "call_uuid:varchar initiated_at:timestamptz user_id:uuid destination_number_enc:bytea "
        "caller_id_enc:bytea destination_number_hash:bytea caller_id_hash:bytea node:varchar status:varchar "
        "direction:varchar answered_at:timestamptz ended_at:timestamptz duration_seconds:int4 codec:varchar "
        "quality_score:numeric disconnect_reason:varchar enc_key_id:int4 reconciled:bool stage:int2",
        frozenset({"destination_number_enc", "caller_id_enc"}),
    ),
)

CALL_EVENTS = TableSpec(
    "call_events",
    key=("call_uuid", "event_type", "seq"),
    columns=_cols("call_uuid:varchar node:varchar seq:int8 event_type:varchar event_data:jsonb timestamp:timestamptz"),
)


class FieldEncoder:
    """Encrypts personal fields and computes blind indexes for the rows, with caches.

    A call is written up to three times (started, answered, finished) with mostly the same
    personal values; encrypting each once per call instead of once per update saves most of
    the writer's CPU. The ciphertext cache is keyed by (key id, call, column, value), so it
    only ever reuses a ciphertext for the same column of the same call (a row that overwrites
    itself): equal values in different calls or columns still get different ciphertexts.
    Blind indexes are deterministic anyway, so they are cached by value. Both caches are
    bounded (oldest entries dropped first).
    """

    def __init__(self, keyring: Keyring, max_entries: int = 200_000) -> None:
        self.keyring = keyring
        self.key_id = keyring.active_id
        self._max = max_entries
        self._cipher: dict[tuple[int, str, str, str], bytes] = {}
        self._blind: dict[tuple[str, str], bytes | None] = {}

    def encrypt(self, call_uuid: str, column: str, value: str | None) -> bytes | None:
        if not value:
            return None
        key = (self.key_id, call_uuid, column, value)
        blob = self._cipher.get(key)
        if blob is None:
            blob = self._cipher[key] = self.keyring.encrypt(value, self.key_id)
            trim_oldest(self._cipher, self._max)
        return blob

    def blind(self, kind: str, value: str | None) -> bytes | None:
        if not value:
            return None
        key = (kind, value)
        if key not in self._blind:
            try:
                self._blind[key] = self.keyring.blind_index(kind, value)
            except ValueError:
                # A value the normaliser cannot read (e.g. a garbled URI) is still stored,
                # encrypted; it just cannot be found by equality search.
                self._blind[key] = None
            trim_oldest(self._blind, self._max)
        return self._blind[key]


def trim_oldest(cache: dict, limit: int) -> None:
    """Keep a bounded cache bounded: beyond ``limit`` entries, drop the oldest tenth and the excess."""
    if len(cache) > limit:
        for key in list(itertools.islice(cache, len(cache) - limit * 9 // 10)):
            del cache[key]


def _jsonb(value: Any) -> Jsonb:
    # orjson, not psycopg's default json.dumps: a fifth of the cost of dumping a batch (profiled).
    return Jsonb(value, dumps=json_bytes)


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


def _quality(score: float | None) -> Decimal | None:
    # calls.quality_score is numeric(3,2) between 1 and 5; a MOS outside that is a measurement
    # artefact, better stored as unknown than refused together with the whole call.
    if score is None or not 1 <= score <= 5:
        return None
    return Decimal(f"{score:.2f}")


def call_record_row(rec: CallRecord, stage: int, enc: FieldEncoder) -> tuple[Any, ...]:
    """One call_records row, in ``CALL_RECORDS.columns`` order."""
    u = rec.call_uuid
    return (
        # YakYak's call_id column holds the call's UUID: the SIP Call-ID often names the caller's
        # host, so it is stored encrypted, with a blind index for equality search.
        u, rec.node, u, enc.encrypt(u, "call_id", rec.call_id), enc.blind("call_id", rec.call_id),
        enc.encrypt(u, "caller", rec.caller), enc.encrypt(u, "callee", rec.callee),
        enc.blind("uri", rec.caller), enc.blind("uri", rec.callee),
        enc.blind("number", rec.caller_number), enc.blind("number", rec.callee_number),
        enc.encrypt(u, "caller_ip", rec.caller_ip), enc.encrypt(u, "callee_ip", rec.callee_ip),
        rec.direction, rec.start_time, rec.answer_time, rec.end_time,
        rec.setup_duration_ms, rec.call_duration_ms, rec.total_duration_ms, rec.status,
        rec.disconnect_reason, rec.codec,
        enc.encrypt(u, "caller_sdp", rec.caller_sdp), enc.encrypt(u, "callee_sdp", rec.callee_sdp),
        rec.caller_user_agent, rec.callee_user_agent,
        _jsonb(rec.media_info) if rec.media_info is not None else None,
        rec.sip_response_code, _uuid(rec.user_id), enc.key_id, rec.reconciled, stage,
    )


def call_row(rec: CallRecord, stage: int, enc: FieldEncoder) -> tuple[Any, ...] | None:
    """The SIPCall ``calls`` row, or None when no local user takes part (DESIGN section 6)."""
    if not rec.user_id:
        return None
    u = rec.call_uuid
    if rec.callee_number:
        destination, destination_hash = rec.callee_number, enc.blind("number", rec.callee_number)
    else:
        destination, destination_hash = rec.callee, enc.blind("uri", rec.callee)
    return (
        u, rec.start_time, _uuid(rec.user_id),
        enc.encrypt(u, "destination_number", destination),
        enc.encrypt(u, "caller_id", rec.caller_number or rec.caller_id_name),
        destination_hash, enc.blind("number", rec.caller_number),
        rec.node, rec.call_status, rec.direction.lower(), rec.answer_time, rec.end_time,
        rec.duration_seconds, rec.codec, _quality(rec.quality_score),
        rec.disconnect_reason[:100] if rec.disconnect_reason else None,
        enc.key_id, rec.reconciled, stage,
    )


def event_rows(update: RecordUpdate) -> list[tuple[Any, ...]]:
    """The update's new call_events rows, in ``CALL_EVENTS.columns`` order."""
    rec = update.record
    return [(rec.call_uuid, rec.node, e.seq, e.event_type, _jsonb(e.data), e.timestamp) for e in update.events]


@dataclass(slots=True)
class BatchRows:
    """Everything one batch writes, deduplicated: one row per key, the highest stage wins.

    ``encoded``: the write method's parameters for these rows, made ahead of the write (the
    writer's prefetcher, while PostgreSQL works on the batch before), or None: made at write time.
    The rows themselves are never changed: merging or splitting makes new, unencoded batches.
    """

    call_records: list[tuple[Any, ...]]
    calls: list[tuple[Any, ...]]
    events: list[tuple[Any, ...]]
    # Derived from the rows: neither compared nor shown.
    encoded: Any = field(default=None, compare=False, repr=False)
    _parts: tuple[int, list[BatchRows]] | None = field(default=None, compare=False, repr=False)  # the last split

    def merged(self, later: BatchRows) -> BatchRows:
        """This batch and a later one as one batch: a row per key, the higher stage winning
        (``later``'s on a tie), sorted by key like ``batch_rows``."""
        return BatchRows(_merge(CALL_RECORDS, self.call_records, later.call_records),
                         _merge(CALLS, self.calls, later.calls), _merge(CALL_EVENTS, self.events, later.events))

    def split(self, parts: int) -> list[BatchRows]:
        """The rows in up to ``parts`` non-empty batches, a call's rows (all three tables) in one of
        them: written concurrently, two parts never touch the same row (every row starts with call_uuid)."""
        if parts <= 1:
            return [self]
        if self._parts is not None and self._parts[0] == parts:  # the same parts, as encoded ahead
            return self._parts[1]
        out = [BatchRows([], [], []) for _ in range(parts)]
        for name in ("call_records", "calls", "events"):
            for row in getattr(self, name):
                getattr(out[hash(row[0]) % parts], name).append(row)  # stays sorted by key
        split = [b for b in out if b.call_records or b.calls or b.events]
        self._parts = (parts, split)
        return split


_ROW_KEYS = {spec.name: itemgetter(*(spec.names.index(k) for k in spec.key))
             for spec in (CALL_RECORDS, CALLS, CALL_EVENTS)}


def _merge(spec: TableSpec, rows: list[tuple[Any, ...]], later: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    if not later:
        return rows
    key = _ROW_KEYS[spec.name]
    by_key = {key(row): row for row in rows}
    for row in later:
        old = by_key.get(k := key(row))
        if old is None or spec is CALL_EVENTS or row[-1] >= old[-1]:  # records' and calls' last column: stage
            by_key[k] = row
    return [by_key[k] for k in sorted(by_key)]


def batch_rows(updates: Sequence[RecordUpdate], enc: FieldEncoder) -> BatchRows:
    """Rows for a batch of updates (any order, duplicates allowed).

    One INSERT ... ON CONFLICT may not touch the same row twice, so per (call_uuid, start_time)
    only the update with the highest stage (the latest one on a tie) is kept; events of every
    update are kept, deduplicated on their own key. Rows are sorted by key so two writers
    lock rows in the same order (no deadlock between two daemons).
    """
    latest: dict[tuple[str, Any], RecordUpdate] = {}
    events: dict[tuple[str, str, int], tuple[Any, ...]] = {}
    for update in updates:
        rec = update.record
        key = (rec.call_uuid, rec.start_time)
        kept = latest.get(key)
        if kept is None or update.stage >= kept.stage:
            latest[key] = update
        for row in event_rows(update):
            events[(row[0], row[3], row[2])] = row
    records, calls = [], []
    for key in sorted(latest):
        update = latest[key]
        records.append(call_record_row(update.record, int(update.stage), enc))
        call = call_row(update.record, int(update.stage), enc)
        if call is not None:
            calls.append(call)
    return BatchRows(records, calls, [events[k] for k in sorted(events)])
