"""Personal data at rest: every personal column is OpenPGP that PostgreSQL and gpg decrypt,
no column (nor the journal) holds plaintext, and a blind index finds a call by number."""

from __future__ import annotations

import os
import subprocess

import pytest

from eslbridge.errors import ConfigError
from eslbridge.keys.blindindex import normalize_number
from eslbridge.keys.keyring import Keyring
from tests.writer_fixtures import (
    call_updates,
    call_uuid,
    create_user,
    make_keyring,
    open_journal,
    personal_values,
    write_all,
)

CALLS = range(6)
# column -> the plaintext it must hold (per call index)
RECORD_COLUMNS = {
    "caller": "caller", "callee": "callee", "caller_ip": "caller_ip", "callee_ip": "callee_ip",
    "caller_sdp": "caller_sdp", "callee_sdp": "callee_sdp",
}
CALL_COLUMNS = {"destination_number_enc": "callee_number", "caller_id_enc": "caller_number"}


@pytest.fixture
def written(db, db_dsn, tmp_path):
    keyring = make_keyring(tmp_path)
    alice = create_user(db)
    updates = [u for i in CALLS for u in call_updates(i, alice if i % 2 else None)]
    with open_journal(tmp_path / "journal", keyring) as journal:
        # Spill half the calls to the journal (tiny queue), so its files hold real records.
        write_all(db_dsn, keyring, journal, updates, queue_max=1)
    return keyring


def _encrypted(db, table, columns):
    """[(call index, column, ciphertext)] for every non-NULL encrypted value in ``table``."""
    out = []
    for row in db.execute(f"SELECT call_uuid, {', '.join(columns)} FROM {table}").fetchall():
        i = next(n for n in CALLS if call_uuid(n) == row[0])
        out += [(i, col, blob) for col, blob in zip(columns, row[1:], strict=True) if blob is not None]
    return out


def test_every_personal_column_decrypts_with_pgp_sym_decrypt(db, written):
    passphrase = written.passphrase(written.active_id)
    seen = set()
    for table, columns in (("call_records", RECORD_COLUMNS), ("calls", CALL_COLUMNS)):
        for i, col, blob in _encrypted(db, table, columns):
            (plain,) = db.execute("SELECT pgp_sym_decrypt(%s, %s)", (blob, passphrase)).fetchone()
            assert plain == personal_values(i)[columns[col]]
            (via_seed,) = db.execute("SELECT decrypt_data(%s, %s)", (blob, passphrase)).fetchone()
            assert via_seed == plain
            seen.add((table, col))
    assert seen == {("call_records", c) for c in RECORD_COLUMNS} | {("calls", c) for c in CALL_COLUMNS}
    key_ids = db.execute("SELECT DISTINCT enc_key_id FROM call_records UNION SELECT enc_key_id FROM calls").fetchall()
    assert key_ids == [(written.active_id,)]


def test_every_personal_column_decrypts_with_gpg(db, written, tmp_path):
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    passphrase = written.passphrase(written.active_id)
    values = [*_encrypted(db, "call_records", RECORD_COLUMNS), *_encrypted(db, "calls", CALL_COLUMNS)]
    assert {col for _, col, _ in values} == set(RECORD_COLUMNS) | set(CALL_COLUMNS)
    for i, col, blob in values:
        message = tmp_path / "message.gpg"
        message.write_bytes(bytes(blob))
        # The passphrase goes through a pipe (fd 0), never the command line.
        result = subprocess.run(
            ["gpg", "--batch", "--quiet", "--pinentry-mode", "loopback", "--passphrase-fd", "0",
             "--decrypt", str(message)],
            input=passphrase.encode(), capture_output=True, env={**os.environ, "GNUPGHOME": str(home)}, timeout=30)
        assert result.returncode == 0, result.stderr.decode()
        mapping = RECORD_COLUMNS if col in RECORD_COLUMNS else CALL_COLUMNS
        # Text-mode literal data ('u'): gpg writes CRLF line ends (an SDP's) as the local LF.
        assert result.stdout.decode() == personal_values(i)[mapping[col]].replace("\r\n", "\n")


def _needles(i):
    values = personal_values(i)
    # Whole values and their distinctive parts (a number inside a URI, an IP inside an SDP).
    return {v for v in values.values()} | {values["caller_number"][1:], values["callee_number"][1:]}


def test_no_column_of_any_table_holds_plaintext(db, written):
    tables = [r[0] for r in db.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'm')").fetchall()]
    assert {"call_records_default", "calls_default", "call_events"} <= set(tables)
    needles = set().union(*(_needles(i) for i in CALLS))
    for table in tables:
        for row in db.execute(f'SELECT * FROM "{table}"').fetchall():
            for value in row:
                text = bytes(value).decode("latin-1") if isinstance(value, (bytes, memoryview)) else str(value)
                hits = [n for n in needles if n in text]
                assert not hits, f"{table} holds plaintext personal data"


def test_journal_files_hold_no_plaintext(db, db_dsn, tmp_path):
    keyring = make_keyring(tmp_path)
    journal_dir = tmp_path / "journal"
    with open_journal(journal_dir, keyring) as journal:
        from eslbridge.store.serialize import encode_update

        journal.append_many([encode_update(u) for i in CALLS for u in call_updates(i)])
    data = b"".join(p.read_bytes() for p in journal_dir.glob("seg-*.log"))
    assert len(data) > 1000
    for needle in set().union(*(_needles(i) for i in CALLS)):
        assert needle.encode() not in data


def test_a_blind_index_finds_a_call_by_caller_number_without_decrypting(db, written):
    number = personal_values(3)["caller_number"]
    typed = f"00{number[1:3]} {number[3:5]} {number[5:8]}-{number[8:]}"  # as a person types it
    assert normalize_number(typed) == number
    rows = db.execute("SELECT call_uuid FROM call_records WHERE caller_number_hash = %s",
                      (written.blind_index("number", typed),)).fetchall()
    assert rows == [(call_uuid(3),)]
    by_uri = db.execute("SELECT call_uuid FROM call_records WHERE callee_hash = %s",
                        (written.blind_index("uri", f"<{personal_values(3)['callee']};transport=udp>"),)).fetchall()
    assert by_uri == [(call_uuid(3),)]
    in_calls = db.execute("SELECT call_uuid FROM calls WHERE caller_id_hash = %s",
                          (written.blind_index("number", number),)).fetchall()
    assert in_calls == [(call_uuid(3),)]


def test_a_key_file_readable_by_others_is_refused(tmp_path):
    keyring = make_keyring(tmp_path)
    key_file = keyring.path.parent / "keys" / "1.key"
    key_file.chmod(0o644)
    with pytest.raises(ConfigError, match="grants access to group or others") as err:
        Keyring.load(keyring.path)
    assert str(key_file) in str(err.value)
    assert key_file.read_text().strip() not in str(err.value)


def test_consecutive_messages_of_every_length_open_in_pgcrypto(db, tmp_path):
    # Messages share one CFB stream per key (eslbridge.keys.openpgp._Encryptor): each must still be a
    # standalone OpenPGP message, whatever the length of the ones before it (block realignment).
    keyring = make_keyring(tmp_path)
    texts = ["é" * (n % 7) + "x" * n for n in range(0, 70)]
    blobs = [keyring.encrypt(t) for t in texts]
    assert len(set(blobs)) == len(blobs)
    opened = db.execute("SELECT array_agg(pgp_sym_decrypt(b, %s) ORDER BY i) FROM unnest(%s::bytea[])"
                        " WITH ORDINALITY AS m(b, i)", (keyring.passphrase(keyring.active_id), blobs)).fetchone()[0]
    assert opened == texts
    assert [keyring.decrypt(b) for b in blobs] == texts
