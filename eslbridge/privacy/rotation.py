"""Key rotation: a new active key, then every row re-encrypted under it, in batches (DESIGN section 8).

Progress lives in the rows themselves: a row is done when its ``enc_key_id`` is the active key.
So a rotation killed at any point resumes by running ``reencrypt`` again, and rows a daemon
writes meanwhile under the old key (it uses the new key only after ``systemctl reload
eslbridge``) are picked up by the next pass.

Each batch is one transaction: ``SELECT ... FOR UPDATE SKIP LOCKED`` takes up to ``batch_size``
rows under another key, decrypts them here with the key they name and writes them back under the
active key. SKIP LOCKED means rotation never waits for a writer (a row a writer holds is taken
by a later batch), so it cannot deadlock with the daemon, and the daemon waits at most one batch.
The passphrases never go to the database.

Which columns are encrypted comes from ``eslbridge.store.rows`` (the writer's column specs); the
values sealed inside ``call_events.event_data`` (``eslbridge.keys.sealed``) are re-sealed the same way,
so no key is retired while a sealed value still needs it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psycopg
from psycopg.types.json import Jsonb

from eslbridge.errors import ConfigError, EslBridgeError
from eslbridge.keys.keyring import Keyring, add_key, remove_key, set_active
from eslbridge.keys.openpgp import DecryptionError
from eslbridge.keys.sealed import FIELD, KEY_FIELD, seal, unseal
from eslbridge.store.rows import CALL_RECORDS, CALLS, TableSpec

ENCRYPTED_TABLES: tuple[TableSpec, ...] = (CALL_RECORDS, CALLS)
SEALED_TABLE = "call_events"  # event_data members FIELD and KEY_FIELD (migration 0014 indexes them)
_SEALED_ROWS = f"FROM {SEALED_TABLE} WHERE event_data ? '{FIELD}'"
DEFAULT_BATCH = 500

Progress = Callable[[str, int, int], None]  # (table, rows in this batch, rows done in this table so far)


def key_usage(conn: psycopg.Connection) -> dict[str, dict[int, int]]:
    """Rows per key id, per encrypted table (the sealed call_events rows included)."""
    usage = {spec.name: dict(conn.execute(
        f"SELECT enc_key_id, count(*) FROM {spec.name} GROUP BY enc_key_id ORDER BY enc_key_id").fetchall())
        for spec in ENCRYPTED_TABLES}
    sealed = conn.execute(f"SELECT event_data->>'{KEY_FIELD}', count(*) {_SEALED_ROWS} GROUP BY 1").fetchall()
    usage[SEALED_TABLE] = dict(sorted((int(key_id), n) for key_id, n in sealed))
    return usage


def keys_in_use(conn: psycopg.Connection) -> set[int]:
    return {key_id for usage in key_usage(conn).values() for key_id in usage}


def _personal(spec: TableSpec) -> list[str]:
    return [c.name for c in spec.columns if c.personal]


def _statements(spec: TableSpec) -> tuple[str, str]:
    personal = _personal(spec)
    key = list(spec.key)
    select = (f"SELECT {', '.join(key)}, enc_key_id, {', '.join(personal)} FROM {spec.name}"
              " WHERE enc_key_id <> %s ORDER BY enc_key_id LIMIT %s FOR UPDATE SKIP LOCKED")
    update = (f"UPDATE {spec.name} SET {', '.join(f'{n} = %s' for n in personal)}, enc_key_id = %s"
              f" WHERE {' AND '.join(f'{k} = %s' for k in key)}")
    return select, update


def _reencrypt_row(keyring: Keyring, spec: TableSpec, row: tuple) -> tuple:
    nkey = len(spec.key)
    key, old_id, blobs = row[:nkey], row[nkey], row[nkey + 1:]
    values = []
    for name, blob in zip(_personal(spec), blobs, strict=True):
        if blob is None:
            values.append(None)
            continue
        try:
            values.append(keyring.encrypt(keyring.decrypt(blob, old_id)))
        except DecryptionError as e:
            raise EslBridgeError(f"{spec.name} row {key[0]}: {name} does not decrypt with key {old_id} ({e}); "
                                 "rotation stopped, rows done so far stay done") from None
    return (*values, keyring.active_id, *key)


def _in_batches(conn: psycopg.Connection, table: str, select: str, params: tuple, update: str,
                convert: Callable[[tuple], tuple], progress: Progress | None) -> int:
    done = 0
    while True:
        with conn.transaction(), conn.cursor() as cur:
            rows = cur.execute(select, params).fetchall()
            if not rows:
                return done
            cur.executemany(update, [convert(row) for row in rows])
        done += len(rows)
        if progress:
            progress(table, len(rows), done)


def _reencrypt_table(conn: psycopg.Connection, keyring: Keyring, spec: TableSpec, batch_size: int,
                     progress: Progress | None) -> int:
    select, update = _statements(spec)
    return _in_batches(conn, spec.name, select, (keyring.active_id, batch_size), update,
                       lambda row: _reencrypt_row(keyring, spec, row), progress)


def _reseal_row(keyring: Keyring, row: tuple) -> tuple:
    row_id, document = row
    try:
        values = unseal(keyring, document)
    except DecryptionError as e:
        raise EslBridgeError(f"{SEALED_TABLE} row {row_id}: {FIELD} does not decrypt with key "
                             f"{document[KEY_FIELD]} ({e}); rotation stopped, rows done so far stay done") from None
    return Jsonb(seal(keyring, values)), row_id


def _reseal_events(conn: psycopg.Connection, keyring: Keyring, batch_size: int, progress: Progress | None) -> int:
    select = (f"SELECT id, event_data {_SEALED_ROWS} AND event_data->>'{KEY_FIELD}' <> %s"
              " LIMIT %s FOR UPDATE SKIP LOCKED")
    update = f"UPDATE {SEALED_TABLE} SET event_data = event_data || %s WHERE id = %s"
    return _in_batches(conn, SEALED_TABLE, select, (str(keyring.active_id), batch_size), update,
                       lambda row: _reseal_row(keyring, row), progress)


def reencrypt(conn: psycopg.Connection, keyring: Keyring, batch_size: int = DEFAULT_BATCH,
              progress: Progress | None = None) -> dict[str, int]:
    """Re-encrypt every row not under ``keyring.active_id``; returns rows re-encrypted per table.

    ``conn`` must be in autocommit mode (each batch commits on its own). Rows locked by a writer
    while the last batch ran are left for the next run: check ``key_usage`` afterwards.
    """
    if batch_size < 1:
        raise EslBridgeError(f"batch size must be at least 1, got {batch_size}")
    missing = keys_in_use(conn) - set(keyring.key_ids)
    if missing:
        raise ConfigError(f"{keyring.path}: rows are encrypted with key(s) {sorted(missing)}, "
                          "which the keyring does not hold; nothing was re-encrypted")
    done = {spec.name: _reencrypt_table(conn, keyring, spec, batch_size, progress) for spec in ENCRYPTED_TABLES}
    done[SEALED_TABLE] = _reseal_events(conn, keyring, batch_size, progress)
    return done


def new_active_key(keyring_path: str | os.PathLike) -> tuple[int, int]:
    """Add a key and make it active; returns (previous active id, new id)."""
    previous = Keyring.load(keyring_path).active_id
    new_id = add_key(keyring_path)
    set_active(keyring_path, new_id)
    return previous, new_id


def retire_key(conn: psycopg.Connection, keyring_path: str | os.PathLike, key_id: int) -> Path:
    """Remove ``key_id`` from the keyring if it is not active and no row uses it; returns its key file.

    The key file itself stays: backups taken before the rotation need it. Archive it offline or
    delete it (that is the operator's decision, and the point where old backups become unreadable).
    """
    keyring = Keyring.load(keyring_path)
    if key_id not in keyring.key_ids:
        raise ConfigError(f"{keyring_path}: no key with id {key_id} in the keyring")
    if key_id == keyring.active_id:
        raise EslBridgeError(f"key {key_id} is the active key; rotate first (eslbridge keys rotate)")
    usage = {table: counts[key_id] for table, counts in key_usage(conn).items() if counts.get(key_id)}
    if usage:
        rows = ", ".join(f"{n} in {table}" for table, n in usage.items())
        raise EslBridgeError(f"key {key_id} still encrypts {rows}; run eslbridge keys rotate --resume first")
    key_file = remove_key(keyring_path, key_id)
    return key_file
