"""No number, address or Call-ID in plaintext anywhere (DESIGN section 8): the captured calls, with
their parties turned into phone numbers and public addresses plus a hostile caller name, go through
the simulator and the whole daemon; then every column of every table (found through the catalog,
bytea ciphertext aside), the journal files and the daemon's log are searched for what was sent.

The calls arrive while the database is unreachable, so finished records wait in the journal (and
are searched there), then it comes back and they reach the tables."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from eslbridge.accounts.users import add_user
from eslbridge.esl.framing import parse_stream
from tests.daemon_fixtures import Env, get, metrics_url, wait_for
from tests.paths import CAPTURED
from tests.test_daemon import Sim, finished_records

CAPTURES = ("bridge-answer", "bridge-busy", "auth-call", "register")
CALLER, CALLEE = "+15551239999", "+15557654321"
PUBLIC_IP, SWITCH_IP = "203.0.113.50", "192.0.2.2"
HOSTILE_NAME = f"Evil\r\nbgapi system id {PUBLIC_IP} '; DROP TABLE users; --"
# The SIP identity the directory serves: users.username and users.realm are plaintext by contract.
IDENTITY_COLUMNS = {("users", "username"), ("users", "realm")}

_CALLER_USER = re.compile(r"(?<![\w.+-])(sipp|1000)(?=@)")
_CALLEE_USER = re.compile(r"(?<![\w.+-])(bridge|tone|1001)(?=@)")


def hostile(value: str, key: str) -> str:
    value = value.replace("127.0.0.1", PUBLIC_IP)
    value = _CALLEE_USER.sub(CALLEE, _CALLER_USER.sub(CALLER, value))
    if value in ("sipp", "1000") and not key.startswith(("Max-", "variable_answer")):
        value = CALLER
    if key == "Caller-Caller-ID-Name":
        value = HOSTILE_NAME
    return value


def hostile_stream(path: Path) -> tuple[bytes, set[str]]:
    """The captures' event frames with hostile values (re-framed), and the Call-IDs they carry."""
    out, call_ids = bytearray(), set()
    for name in CAPTURES:
        for frame in parse_stream((CAPTURED / f"{name}.json.esl").read_bytes()):
            if frame.content_type != "text/event-json":
                continue
            event = {k: hostile(v, k) if isinstance(v, str) else v for k, v in json.loads(frame.body).items()}
            if event.get("variable_sip_call_id"):
                call_ids.add(event["variable_sip_call_id"])
            body = json.dumps(event).encode()
            out += b"Content-Length: %d\nContent-Type: text/event-json\n\n" % len(body) + body
    path.write_bytes(bytes(out))
    return bytes(out), call_ids


def table_texts(dsn: str) -> dict[tuple[str, str], str]:
    """Every non-bytea column of every table in the schema, as text, joined per column."""
    with psycopg.connect(dsn) as conn:
        columns = conn.execute(
            "SELECT c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'm') AND a.attnum > 0 AND NOT a.attisdropped"
            " AND a.atttypid <> 'bytea'::regtype").fetchall()
        texts = {}
        for table, column in columns:
            rows = conn.execute(f'SELECT "{column}"::text FROM "{table}" WHERE "{column}" IS NOT NULL').fetchall()
            texts[table, column] = "\n".join(r[0] for r in rows)
    return texts


def database_connections(dsn: str, allow: bool) -> None:
    """Open or close the test database to new connections; closing also ends the current ones."""
    name = conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allow else "false")))
        if not allow:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def found_in(haystack: str, needles: set[str]) -> list[str]:
    return sorted(n for n in needles if n in haystack)


def test_captured_calls_with_hostile_values_leave_no_plaintext(env: Env, db_dsn: str) -> None:
    stream, call_ids = hostile_stream(env.tmp / "hostile.esl")
    needles = {CALLER.lstrip("+"), CALLEE.lstrip("+"), PUBLIC_IP, SWITCH_IP, "bgapi system id", *call_ids}
    assert all(n.encode() in stream for n in needles - {SWITCH_IP}) and len(call_ids) >= 4
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        add_user(conn, CALLER, PUBLIC_IP, "pw-caller-secret", rounds=4)

    # 1. Connected (so the user index is loaded), then the database goes away: the calls, played
    # by a second simulator on the same port once the daemon has reconnected, stay in the journal.
    quiet = Sim(env.tmp)
    config = env.config(quiet.port, name="a")
    proc = env.start(config, name="a")
    try:
        wait_for(lambda: get(metrics_url(config, "/healthz"))[0] == 200, 30, "the daemon ready")
        database_connections(db_dsn, allow=False)
        quiet.stop()
        sim = Sim(env.tmp, "--replay", str(env.tmp / "hostile.esl"), "--listen", f"127.0.0.1:{quiet.port}")
        try:
            sim.wait_line("replayed")

            def journal_holds_records() -> bool:
                match = re.search(r"^eslbridge_journal_bytes (\S+)$", get(metrics_url(config, "/metrics"))[1], re.M)
                return match is not None and float(match.group(1)) > 0

            wait_for(journal_holds_records, 30, "records in the journal")
            files = [p for p in (env.tmp / "journal-a").rglob("*") if p.is_file()]
            assert any(p.name.startswith("seg-") and p.stat().st_size > 0 for p in files)
            for path in files:
                assert found_in(path.read_bytes().decode("latin-1"), needles) == [], path

            # 2. The database is back: the records reach the tables.
            database_connections(db_dsn, allow=True)
            wait_for(lambda: len(finished_records(db_dsn)) >= 3, 60, "records written after the outage")
        finally:
            sim.stop()
        with psycopg.connect(db_dsn) as conn:
            assert conn.execute("SELECT count(*) FROM calls").fetchone()[0] >= 1  # the user's own call
            assert conn.execute("SELECT count(*) FROM call_events").fetchone()[0] > 0
            assert conn.execute("SELECT count(*) FROM call_records WHERE call_id_hash IS NOT NULL").fetchone()[0] == 3
        texts = table_texts(db_dsn)
        leaks = {col: found_in(text, needles) for col, text in texts.items() if col not in IDENTITY_COLUMNS}
        assert {col: hits for col, hits in leaks.items() if hits} == {}
        assert ("call_records", "call_id") in texts and ("call_events", "event_data") in texts
    finally:
        database_connections(db_dsn, allow=True)
        proc.kill()
        proc.wait()
    assert found_in(env.log("a"), needles) == []
