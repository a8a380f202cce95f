"""GDPR export and erase of one person (DESIGN section 8; rules in docs/AUDITORS.md).

The database does the finding and the erasing (``export_user_data``, ``gdpr_erase``: migration
0007), so the SQL functions an auditor calls and these commands cannot disagree. What only
eslbridge has is the keyring: it adds the person's blind-index hashes (calls before they were a
user, calls where they were only the callee) and decrypts the export here, with the key each row
names, so no passphrase ever travels to the database (where a slow-query log could keep it).

A person is ``USER@REALM``. Their identity hashes:

* ``uri`` hashes of ``sip:USER@REALM`` and ``sips:USER@REALM`` (the From/To URI of their calls);
* the ``number`` hash of ``USER`` (an extension dials and shows up as its username), unless
  another user has the same username in another realm: then a number cannot tell the two
  apart and only the URI hashes and ``user_id`` count.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg

from eslbridge.accounts.audit import audit
from eslbridge.accounts.users import check_realm, check_username
from eslbridge.errors import ConfigError, EslBridgeError
from eslbridge.keys.keyring import Keyring
from eslbridge.keys.openpgp import DecryptionError
from eslbridge.store.rows import CALL_RECORDS, CALLS, TableSpec

EXPORT_FORMAT = "eslbridge-gdpr-export/1"


@dataclass(frozen=True)
class Subject:
    """The person an export or erase is about."""

    username: str
    realm: str
    user_id: uuid.UUID | None  # None: not (or no longer) a user; found by the blind index only
    hashes: list[bytes] = field(repr=False)
    number_matched: bool  # whether the number hash of the username is among ``hashes``

    @property
    def identities(self) -> list[str]:
        """Strings naming the person in the audit log (the database adds the user's email)."""
        return [self.username, f"{self.username}@{self.realm}"]

    def describe(self) -> dict[str, Any]:
        """What the export and the audit entry say about how rows were found (no hashes)."""
        return {"by_user_id": self.user_id is not None, "by_uri": True, "by_number": self.number_matched}


def _hash(keyring: Keyring, kind: str, value: str) -> bytes | None:
    try:
        return keyring.blind_index(kind, value)
    except ValueError:  # a username the normaliser cannot read as a number or URI
        return None


def find_subject(conn: psycopg.Connection, keyring: Keyring, username: str, realm: str) -> Subject:
    """The person ``username@realm``, with the hashes their calls carry (see module docstring)."""
    username, realm = check_username(username), check_realm(realm)
    row = conn.execute("SELECT id FROM users WHERE username = %s AND realm = %s", (username, realm)).fetchone()
    namesakes = conn.execute("SELECT count(*) FROM users WHERE username = %s AND realm <> %s",
                             (username, realm)).fetchone()[0]
    hashes = [_hash(keyring, "uri", f"{scheme}:{username}@{realm}") for scheme in ("sip", "sips")]
    number_matched = namesakes == 0
    if number_matched:
        hashes.append(_hash(keyring, "number", username))
    return Subject(username, realm, row[0] if row else None, [h for h in hashes if h is not None],
                   number_matched and hashes[-1] is not None)


def _personal_fields(spec: TableSpec) -> list[str]:
    # The export names calls' encrypted columns as the seed does: destination_number_enc -> destination_number.
    return [c.name.removesuffix("_enc") for c in spec.columns if c.personal]


_PERSONAL = {"call_records": _personal_fields(CALL_RECORDS), "calls": _personal_fields(CALLS)}


def _decrypt_rows(keyring: Keyring, table: str, rows: list[dict[str, Any]]) -> None:
    """Replace the hex ciphertext of each personal field by its text, with the row's key."""
    for row in rows:
        for name in _PERSONAL[table]:
            if row.get(name) is None:
                continue
            try:
                row[name] = keyring.decrypt(bytes.fromhex(row[name]), row["enc_key_id"])
            except (DecryptionError, ConfigError) as e:
                raise EslBridgeError(
                    f"{table} row of call {row['call_uuid']}: {name} does not decrypt with key "
                    f"{row['enc_key_id']} ({e}); nothing was exported") from None


def export_subject(conn: psycopg.Connection, keyring: Keyring, subject: Subject, actor: str | None = None) -> dict:
    """Everything held about ``subject``, personal fields decrypted; audited as ``gdpr.export``."""
    with conn.transaction():
        data = conn.execute("SELECT export_user_data(%s, NULL, %s)", (subject.user_id, subject.hashes)).fetchone()[0]
        for table in _PERSONAL:
            _decrypt_rows(keyring, table, data[table])
        counts = {name: len(data[name]) for name in ("calls", "call_records", "call_events", "audit_logs")}
        audit(conn, "gdpr.export", "user", subject.user_id, {"found": subject.describe(), "rows": counts},
              user_id=subject.user_id, actor=actor)
    return {
        "format": EXPORT_FORMAT,
        "generated_at": datetime.now(UTC).isoformat(),
        "subject": {"username": subject.username, "realm": subject.realm,
                    "user_id": None if subject.user_id is None else str(subject.user_id),
                    "found": subject.describe()},
        **data,
    }


def _gdpr_erase(conn: psycopg.Connection, subject: Subject) -> dict[str, int]:
    return conn.execute("SELECT gdpr_erase(%s, %s, %s)",
                        (subject.user_id, subject.hashes, subject.identities)).fetchone()[0]


def erase_counts(conn: psycopg.Connection, subject: Subject) -> dict[str, int]:
    """What ``erase_subject`` would remove now: the same erase, in a transaction rolled back."""
    with conn.transaction(force_rollback=True):
        return _gdpr_erase(conn, subject)


def erase_subject(conn: psycopg.Connection, subject: Subject, actor: str | None = None) -> dict[str, int]:
    """Erase ``subject`` everywhere (rule: docs/AUDITORS.md); one transaction, audited as ``gdpr.erase``.

    The audit entry names the deleted user's UUID (a random identifier that, once the user row is
    gone, links to nothing) and counts, never the username or email.
    """
    with conn.transaction():
        counts = _gdpr_erase(conn, subject)
        audit(conn, "gdpr.erase", "user", subject.user_id, {"found": subject.describe(), "rows": counts},
              actor=actor)
    return counts
